"""`python -m sparseinfer`: the same command as `sparseinfer`."""

from sparseinfer.cli import main

if __name__ == "__main__":
    main()
