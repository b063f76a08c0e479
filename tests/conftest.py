import os
import sys

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmvit import data  # noqa: E402
from tests import jax_cache  # noqa: E402

jax_cache.enable()


@pytest.fixture(scope="session")
def data_dir():
  """The offline suite, built once per machine (MMVIT_DATA_DIR or /tmp/mmvit_test_data)."""
  d = os.environ.get("MMVIT_DATA_DIR") or "/tmp/mmvit_test_data"
  for name in data.DATASETS:
    data.ensure_built(name, d)
  return d


class Media:
  """Folders of real media files made once per session (scripts/make_media.py), built into
  datasets on demand: photos (2 classes), speech (4 words), clips (4 digits with the spoken
  word as audio track)."""

  def __init__(self, root):
    self.root = str(root)
    self.data_dir = os.path.join(self.root, "data")
    self._made = {}

  def make(self, kind, **kw):
    import make_media  # noqa: PLC0415  (scripts/, on sys.path below)
    key = (kind, tuple(sorted(kw.items())))
    if key not in self._made:
      path = os.path.join(self.root, f"{kind}{len(self._made)}")
      {"photos": make_media.photos, "speech": make_media.speech_folder,
       "clips": make_media.clips_folder}[kind](path, **kw)
      self._made[key] = path
    return self._made[key]

  def split_files(self, name, split, folder, label="label"):
    """(files, labels) of a built dataset's split: each record's stored path joined to the
    folder it was built from, and its label (as stored)."""
    records = data.data_source(name, split, self.data_dir)
    files, labels = [], []
    for i in range(len(records)):
      r = records[i]
      rel = r["path"].decode() if isinstance(r["path"], bytes) else str(r["path"])
      files.append(os.path.join(folder, rel))
      labels.append(r[label])
    return files, labels

  def build(self, name, *args):
    """`python -m mmvit.data build` in-process, once per name; returns the dataset name."""
    from mmvit.data import __main__ as cli  # noqa: PLC0415
    if not os.path.isdir(os.path.join(self.data_dir, name)):
      code = cli.main(["build", f"--name={name}", f"--data_dir={self.data_dir}", "--workers=0",
                       "--quiet", *args])
      assert code == 0
    return name


@pytest.fixture(scope="session")
def media(tmp_path_factory):
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "scripts"))
  return Media(tmp_path_factory.mktemp("media"))
