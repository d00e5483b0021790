"""Many series at once: shape buckets solved in one compiled call, and Dask distribution."""

from .runner import DEFAULT_BUCKET, align_batch, bucket_shape

__all__ = ["DEFAULT_BUCKET", "align_batch", "bucket_shape"]
