"""The pinned upstream sources of the two datasets (paper-spec §1.1): a leaf module.

``stripes.data.settings`` (which fills ``data.pop909_url`` / ``data.structure_url`` when the
config leaves them null) and ``stripes.data.fetch`` (which downloads and verifies) both import
it, so neither imports the other to learn a URL or a commit.
"""

from __future__ import annotations

from dataclasses import dataclass

# GitHub serves the POP909 archive from the repo itself and the structure annotations as a
# whole-repository zip at the commit.
POP909_COMMIT = "d83e6edba6872a704f5d3b8b32f5cb540088dae6"
STRUCTURE_COMMIT = "3a8d0d096e8dd2f62e38e48500bf0b230eeca585"


@dataclass(frozen=True)
class Source:
    name: str  # "pop909" | "structure"
    env: str  # environment variable overriding the local folder
    manifest: str  # resource file name of the checksum list
    url: str  # default download URL (zip)
    commit: str

    @property
    def dir_key(self) -> str:
        """The data-section key of the local folder."""
        return "pop909_dir" if self.name == "pop909" else "structure_dir"

    @property
    def url_key(self) -> str:
        """The data-section key of the download URL (null in the config: :attr:`url`)."""
        return "pop909_url" if self.name == "pop909" else "structure_url"


SOURCES = {
    "pop909": Source(
        "pop909",
        "STRIPES_POP909",
        "pop909.sha256",
        f"https://github.com/music-x-lab/POP909-Dataset/raw/{POP909_COMMIT}/POP909.zip",
        POP909_COMMIT,
    ),
    "structure": Source(
        "structure",
        "STRIPES_POP909_STRUCTURE",
        "pop909_structure.sha256",
        f"https://github.com/Dsqvival/hierarchical-structure-analysis/archive/{STRUCTURE_COMMIT}.zip",
        STRUCTURE_COMMIT,
    ),
}
