"""What lmkit reads of a torch.distributed.checkpoint (DCP) folder, without DCP's own unpickling.

Left to itself, DCP's FileSystemReader unpickles `.metadata` and its DefaultLoadPlanner unpickles every
non-tensor value with an unrestricted torch.load: a crafted checkpoint could run code. lmkit never lets
either happen: it overrides both (Reader.read_metadata, Planner.load_bytes below). It reads `.metadata` with
MetadataUnpickler, which allows only what torch writes there (the classes of
torch.distributed.checkpoint.metadata, torch dtypes and sizes, layouts, paths and the file reader's
_StorageInfo: found by loading real DDP and FSDP checkpoints), hands the result to DCP's reader, and reads
non-tensor values with torch.load(weights_only=True). Tensors DCP reads with weights_only=True itself.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..errors import LmkitError

METADATA_MODULE = "torch.distributed.checkpoint.metadata"
METADATA_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                    ("pathlib", "WindowsPath"), ("pathlib._local", "PosixPath"), ("pathlib._local", "WindowsPath"),
                    ("torch.distributed.checkpoint.filesystem", "_StorageInfo")}


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's .metadata and nothing else: the classes of torch.distributed.checkpoint.metadata,
    torch dtypes and sizes, layouts, paths and the file reader's _StorageInfo (what torch writes there)."""

    def find_class(self, module: str, name: str):
        import torch.distributed.checkpoint.metadata as classes
        own = getattr(classes, name, None) if module == METADATA_MODULE else None
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in METADATA_GLOBALS or dtype or (isinstance(own, type) and own.__module__ == METADATA_MODULE):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def read_metadata(path: Path):
    """The Metadata of the DCP checkpoint in `path`, read with MetadataUnpickler; LmkitError when the file
    holds anything else, or names data files outside the folder."""
    from torch.distributed.checkpoint.metadata import Metadata
    file = Path(path) / ".metadata"
    try:
        with open(file, "rb") as f:
            md = MetadataUnpickler(f).load()
    except Exception as e:  # pickle raises many types for bad data
        raise LmkitError(f"{file}: not a distributed checkpoint's metadata, not read "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict) or \
            not all(Path(str(getattr(i, "relative_path", "/"))).name == getattr(i, "relative_path", None)
                    for i in (md.storage_data or {}).values()):
        raise LmkitError(f"{file}: not a distributed checkpoint's metadata (or it names files outside {path})")
    return md


def safe_loaders(path: Path, metadata):
    """DCP's file reader, handed the metadata already read (so that DCP does not unpickle it), and a load
    planner that reads non-tensor values with torch.load(weights_only=True)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            try:
                obj = torch.load(value, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                raise LmkitError(f"{read_item.dest_index.fqn} holds more than plain values (lmkit never unpickles "
                                 "a file it is handed): not read") from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return Reader(path), Planner()
