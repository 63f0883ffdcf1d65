"""`python -m api.cli`: the `switchyard` command without its console script (tests, benchmarks)."""

from api.cli import main

if __name__ == "__main__":
    main()
