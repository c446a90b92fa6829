"""ShardWriter writes a batch once its images reach BATCH_BYTES, not only every batch_rows rows."""

import pyarrow.parquet as pq
from datasets import Features, Image, Value

from geohf.data import folder


def test_batches_flushed_by_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(folder, "BATCH_BYTES", 3000)
    features = Features({"image": Image(), "n": Value("int32")})
    writer = folder.ShardWriter(tmp_path, "train", features, rows_per_shard=100, batch_rows=256)
    for n in range(10):
        writer.write({"image": {"bytes": bytes(1000), "path": f"{n}.png"}, "n": n})
    info = writer.close()
    shard = pq.ParquetFile(tmp_path / folder.DATA_DIR / info.shards[0])
    # 3 images of 1,000 bytes fill a batch: 4 row groups (3 + 3 + 3 + 1) where rows alone would make 1
    assert shard.metadata.num_row_groups == 4 and shard.metadata.num_rows == 10
    assert folder._blob_bytes({"image": {"bytes": b"abc", "path": "x"}, "n": 1, "s": "text"}) == 3
