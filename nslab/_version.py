"""nslab's version, in a leaf module so that any module can import it without importing the package."""
__version__ = "0.2.0"
