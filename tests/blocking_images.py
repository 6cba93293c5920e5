"""A training image folder whose reads block forever from one chosen sample on: storage
that stops answering, for real (a FIFO, not a mock of jaxsr).

The folder holds N_IMAGES small PNGs of distinct constant colours, so a crop names the
image it came from. `block_at` finds, by running the real input pipeline over the folder,
which image the training stream reads at a given sample position, and replaces that
file with a FIFO. The FIFO is fed while the training checks its images at start-up (the
test stops the feed when the log says "training images: "); the next open of it, the
data reader's at that position, blocks forever, however long the process waits.
"""
import os
import threading

import numpy as np
from PIL import Image

N_IMAGES = 64       # every sample position < N_IMAGES is a different image (one epoch)
SIDE = 32


def colour(i: int) -> tuple[int, int, int]:
    return (4 * i, 255 - 4 * i, (97 * i) % 256)


def make_folder(folder) -> str:
    os.makedirs(folder, exist_ok=True)
    for i in range(N_IMAGES):
        img = np.full((SIDE, SIDE, 3), colour(i), np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"img_{i:03d}.png"))
    return str(folder)


def image_at(config, position: int, process_index: int = 0, process_count: int = 1) -> int:
    """The image the training stream of `config` reads at sample `position` in process
    `process_index` of `process_count`, from the real pipeline's batches."""
    from jaxsr.data import pipeline
    config = config.copy_and_resolve_references()
    # No reader threads here (the same stream): none may open the FIFO that replaces a file.
    config.data.num_threads = 0
    batch = config.train.batch_size // process_count      # this process's share
    it = iter(pipeline.train_dataset(config, process_index, process_count))
    try:
        for _ in range(position // batch):
            next(it)
        sample = np.asarray(next(it)["hr"])[position % batch]
    finally:
        it.close()
    found = [i for i in range(N_IMAGES) if (sample == colour(i)).all()]
    assert len(found) == 1, f"sample {position} is no image of the folder"
    return found[0]


class FifoImage:
    """Replaces image `index` of `folder` by a FIFO, fed to every reader until `stop()`
    (call it once the training's start-up checks are done); after that, an open of it
    blocks forever."""

    def __init__(self, folder: str, index: int):
        self.path = os.path.join(folder, f"img_{index:03d}.png")
        with open(self.path, "rb") as f:
            self.data = f.read()
        os.remove(self.path)
        os.mkfifo(self.path)
        self.served = 0
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()

    def _feed(self):
        # Non-blocking opens succeed only while a reader has the FIFO open. A reader that
        # gets a second copy before its EOF still decodes the first (PNG ends at IEND).
        while not self._stop.wait(0.002):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:             # ENXIO: no reader now
                continue
            try:
                os.write(fd, self.data)
                self.served += 1
            except OSError:             # the reader left, or its pipe is full
                pass
            finally:
                os.close(fd)

    def stop(self):
        self._stop.set()
        self._feeder.join(timeout=5)


def block_at(folder: str, config, position: int, process_index: int = 0,
             process_count: int = 1) -> FifoImage:
    """From sample `position` on, the training stream of `config` over `folder` blocks
    in that process (once `stop()` was called on the result)."""
    return FifoImage(folder, image_at(config, position, process_index, process_count))
