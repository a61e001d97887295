"""``python -m convirt_hf.data.synthetic``: see :mod:`.cli`."""

from .cli import main

if __name__ == "__main__":
    main()
