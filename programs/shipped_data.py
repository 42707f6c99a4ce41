"""Where the problem sets shipped with the project live (programs/data/, SOURCES.md says where each came from).

Its own module because two sides read it that must not import each other: the loader (`programs.datasets`,
which imports the offline task for its generated sets) and the offline model builder
(`programs.offline.model`, whose tokenizer also learns the words of these files).
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
