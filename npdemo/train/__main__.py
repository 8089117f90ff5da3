import sys

from .stages import main

if __name__ == "__main__":
    main(sys.argv[1:])
