"""Records, dead-letter headers and settings shared by the driver and the actors.

This package is the bottom of the dependency graph (``schemas`` <- ``workers`` <- ``pipelines``):
it imports no torch, ray or kafka, so anything can depend on it cheaply.
"""

from schemas.dlq import DlqHeader
from schemas.records import SCHEMA_VERSION, Label, LabeledTweet, LabelScores, Tweet
from schemas.settings import Settings

__all__ = ["SCHEMA_VERSION", "DlqHeader", "Label", "LabelScores", "LabeledTweet", "Settings", "Tweet"]
