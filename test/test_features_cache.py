"""Dataset feature extraction and its disk cache: hit, miss on changed settings, miss on a changed
image, corrupt file reported and rebuilt; frame order; label features end to end from files."""

import json
import os
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from f3rm_ros.core.features import (LabelFeatureConfig, create_extractor, create_extractor_for_dataset,
                                    extract_dataset_features)
from f3rm_ros.core.features.cache import CacheCorruptWarning, FeatureCache
from f3rm_ros.core.features.labels import LabelFeatureExtractor

TABLE = {"1": {"object": "table", "category": "table", "part": None},
         "2": {"object": "red mug", "category": "mug", "part": "body", "synonyms": ["cup"]},
         "3": {"object": "red mug", "category": "mug", "part": "handle", "synonyms": ["cup"]}}
H, W = 42, 70


def _write_dataset(root, n=5, start=0):
    """A tiny dataset in the contracts.md format: PNG images, 16-bit label PNGs, f3rm_labels.
    Files of frames < start are left as they are (an appended dataset)."""
    root.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n):
        if i >= start:
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / f"img_{i:03d}.png")
            lab = np.ones((H, W), np.uint16)
            lab[10:30, 5 + 8 * i:30 + 8 * i] = 2
            lab[10:30, 30 + 8 * i:35 + 8 * i] = 3
            lab[:3] = 0
            Image.fromarray(lab).save(root / f"lab_{i:03d}.png")
        T = np.eye(4)
        T[:3, 3] = [0.1 * i, 0.0, 1.0]
        frames.append({"file_path": f"img_{i:03d}.png", "label_path": f"lab_{i:03d}.png",
                       "transform_matrix": T.tolist()})
    meta = {"camera_model": "PINHOLE", "fl_x": 50.0, "fl_y": 50.0, "cx": W / 2, "cy": H / 2, "w": W, "h": H,
            "frames": frames, "f3rm_labels": TABLE}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def _extract(ext, root, cache_dir):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        feats = extract_dataset_features(ext, root, cache_dir, progress=False)
        dt = time.perf_counter() - t0
    return feats, dt, [x for x in w if issubclass(x.category, CacheCorruptWarning)]


def test_label_features_from_files_in_frame_order(tmp_path):
    root = _write_dataset(tmp_path / "ds")
    ext = LabelFeatureExtractor(LabelFeatureConfig(dim=16, patch_size=7, dataset=str(root)))
    calls = []
    feats = extract_dataset_features(ext, root, None, batch_size=2, progress=True,
                                     on_progress=lambda d, n: calls.append((d, n)))
    print("grid", tuple(feats.shape), "progress calls", calls)
    assert feats.shape == (5, 6, 10, 16) and feats.dtype == torch.float32
    assert calls == [(2, 5), (4, 5), (5, 5)]
    for i in range(5):
        lab = np.asarray(Image.open(root / f"lab_{i:03d}.png")).astype(np.uint16)
        direct = ext.extract(None, [lab])[0].to(torch.float16).float()
        assert torch.equal(feats[i], direct)
    # the mug's patches answer "mug" and move with the frame index
    sim = torch.nn.functional.normalize(feats, dim=-1) @ ext.encode_text(["mug"])[0]
    cols = [int(sim[i, 2].argmax()) for i in range(5)]
    print("column of the best 'mug' patch per frame:", cols)
    assert cols == sorted(cols) and cols[0] < cols[-1]


class CountingLabels(LabelFeatureExtractor):
    """The label extractor, counting the frames it is asked to extract."""

    count = 0

    def extract(self, images, label_maps=None):
        self.count += len(label_maps)
        return super().extract(images, label_maps)


def test_cache_hit_miss_changed_corrupt(tmp_path):
    root = _write_dataset(tmp_path / "ds")
    cache_dir = tmp_path / "cache"
    ext = CountingLabels(LabelFeatureConfig(dim=16, patch_size=7), TABLE)
    cache = FeatureCache(cache_dir)

    f1, t_miss, bad = _extract(ext, root, cache_dir)
    files = sorted(cache_dir.glob("*.pt"))
    assert len(files) == 1 and not bad and ext.count == 5
    f2, t_hit, bad = _extract(ext, root, cache_dir)
    assert torch.equal(f1, f2) and not bad and ext.count == 5  # hit: nothing extracted
    # the stored key is checked: a hit reports "hit"
    from f3rm_ros.core.features.extraction import dataset_cache_key
    from f3rm_ros.core.dataset import load_dataset

    slot, key = dataset_cache_key(ext, load_dataset(root), "float16")
    assert cache.load(files[0], key) is not None and cache.last_status == "hit"
    print(f"miss {t_miss * 1e3:.1f} ms, hit {t_hit * 1e3:.1f} ms, cache file {files[0].name}")

    # changed settings -> another slot (miss), the first stays valid
    ext2 = LabelFeatureExtractor(LabelFeatureConfig(dim=16, patch_size=14), TABLE)
    f3, _, _ = _extract(ext2, root, cache_dir)
    assert f3.shape == (5, 3, 5, 16)
    assert len(list(cache_dir.glob("*.pt"))) == 2

    # changed image: rewrite one label file (new content + mtime) -> the stored key differs
    lab = np.asarray(Image.open(root / "lab_002.png")).astype(np.uint16).copy()
    lab[:, :] = 1
    Image.fromarray(lab).save(root / "lab_002.png")
    st = os.stat(root / "lab_002.png")
    os.utime(root / "lab_002.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, key_new = dataset_cache_key(ext, load_dataset(root), "float16")
    assert key_new != key
    assert cache.load(files[0], key_new) is None and cache.last_status == "changed"
    before = ext.count
    f4, _, bad = _extract(ext, root, cache_dir)
    changed = [i for i in range(5) if not torch.equal(f4[i], f1[i])]
    print("frames whose features changed after editing lab_002:", changed, "re-extracted:", ext.count - before)
    assert changed == [2] and not bad
    assert ext.count - before == 1  # the unchanged frames were reused from the stale cache file
    fresh = extract_dataset_features(ext, root, None, progress=False)
    assert torch.equal(f4, fresh)
    assert len(list(cache_dir.glob("*.pt"))) == 2  # same slot rewritten

    # touching an image file (mtime only) is also a change for the key
    slot, key = dataset_cache_key(ext, load_dataset(root), "float16")
    st = os.stat(root / "img_000.png")
    os.utime(root / "img_000.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, key_after = dataset_cache_key(ext, load_dataset(root), "float16")
    assert key != key_after

    # corrupt file: truncate -> warning naming the file, deleted, rebuilt, never used
    f5, _, _ = _extract(ext, root, cache_dir)
    path = files[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    f6, _, bad = _extract(ext, root, cache_dir)
    print("corrupt warning:", bad[0].message if bad else None)
    assert len(bad) == 1 and path.name in str(bad[0].message)
    assert torch.equal(f5, f6) and path.exists()
    _, _, bad = _extract(ext, root, cache_dir)
    assert not bad  # rebuilt file is valid

    # bit flip inside the tensor payload: caught by the checksum
    obj = torch.load(path, weights_only=True)
    obj["features"].view(-1)[7] += 1.0
    torch.save(obj, path)
    with pytest.warns(CacheCorruptWarning, match="checksum mismatch"):
        assert cache.load(path, obj["key"]) is None
    assert cache.last_status == "corrupt"
    assert not path.exists()


def test_growing_dataset_extracts_only_new_frames(tmp_path):
    root = _write_dataset(tmp_path / "ds", n=4)
    cache_dir = tmp_path / "cache"
    ext = CountingLabels(LabelFeatureConfig(dim=16, patch_size=7), TABLE)
    f4 = extract_dataset_features(ext, root, cache_dir, progress=False)
    _write_dataset(root, n=6, start=4)  # frames 4 and 5 appended, files of 0-3 untouched
    count = ext.count
    f6 = extract_dataset_features(ext, root, cache_dir, progress=False)
    print("frames extracted after growing 4 -> 6:", ext.count - count)
    assert ext.count - count == 2 and f6.shape[0] == 6
    assert torch.equal(f6[:4], f4)
    assert torch.equal(f6, extract_dataset_features(ext, root, None, progress=False))


def test_create_extractor_for_dataset_takes_its_label_table(tmp_path):
    from f3rm_ros.core.dataset import load_dataset

    root = _write_dataset(tmp_path / "ds", n=2)
    for ds in (root, load_dataset(root)):
        ext = create_extractor_for_dataset({"extractor": "labels", "labels": {"dim": 16}}, ds)
        assert ext.table["3"] == {"object": "red mug", "category": "mug", "part": "handle", "synonyms": ["cup"]}
    fox = "/work/shared/data/fox"
    if os.path.isdir(fox):
        with pytest.raises(ValueError, match="f3rm_labels"):
            create_extractor_for_dataset({"type": "labels"}, fox)
    else:
        print("fox dataset not present here; its no-table error case is not checked")


def test_errors(tmp_path):
    root = _write_dataset(tmp_path / "ds", n=2)
    meta = json.loads((root / "transforms.json").read_text())
    del meta["frames"][1]["label_path"]
    (root / "transforms.json").write_text(json.dumps(meta))
    ext = create_extractor({"type": "labels", "dim": 16}, label_table=TABLE)
    with pytest.raises(ValueError, match="label_path for every frame"):
        extract_dataset_features(ext, root, None, progress=False)
    with pytest.raises(ValueError, match="store_dtype"):
        extract_dataset_features(ext, root, None, store_dtype="int8")
