"""detectron2's DatasetMapper, with errors that name the image they happened on."""
from detectron2.data import DatasetMapper

__all__ = ["ImageNamingDatasetMapper", "ImageMappingError"]


class ImageMappingError(RuntimeError):
    """Reading or transforming one dataset image failed; the message names the file."""


class ImageNamingDatasetMapper(DatasetMapper):
    """:class:`DatasetMapper` whose failures name the image file.

    PIL's errors for a truncated file or an image beyond the decompression-bomb limit, and
    most transform errors, do not say which file they came from; in a data-loader worker,
    deep in a training run, that leaves the user searching. The original exception is
    chained (``__cause__``).
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except Exception as error:
            file_name = dataset_dict.get("file_name", "<no file_name>")
            raise ImageMappingError(f"{file_name}: {type(error).__name__}: {error}") from error
