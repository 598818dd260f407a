"""The package's version: a leaf module any floor may import (the package face re-exports it)."""

__version__ = "0.1.0"
