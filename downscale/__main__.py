"""Allow ``python -m downscale``."""

from downscale.main import main

if __name__ == "__main__":
    main()
