"""harness: a multi-task transfer evaluation harness for frozen visual encoders."""

__version__ = "0.1.0"
