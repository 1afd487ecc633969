"""The set builder: the dataset classes, their validation, and the generation of a set into its folder
(one process per core, into a temporary folder renamed into place)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from ..base import ReIDDataset
from ..layout import parse_market_layout
from .nuisances import Nuisances, _nuisances
from .plan import _camera_groups, _plan_set
from .render import _Renderer

log = logging.getLogger(__name__)

_VERSION = 1  # bump whenever the rendering changes, so cached folders are not reused by mistake
_PATTERN = re.compile(r"([-\d]+)_c(\d+)s")  # PPPP_cCsS_FFFFFF_BB.jpg -> pid PPPP, camera C (1-based, 1..99)
_JOB_IMAGES = 200  # images per job of the process pool
_IN_PROCESS_BELOW = 1000  # smaller sets render in the calling process (workers=None)


class Synthetic(ReIDDataset):
    """Procedural pedestrian re-ID benchmark (see the module docstring).

    The constructor's defaults are the full-strength camera model (camera_shift 1.0, noise 1.0, occlusion
    0.2). ``python train.py`` trains on ``conf/dataset/synthetic.yaml`` instead (0.3 / 0.3 / 0.1), so
    ``Synthetic(root)`` is not the default benchmark: pass those values to get it.

    Args:
        root: data root; images go to ``<root>/<name>/<folder named by every parameter>`` (``name``:
            ``synthetic``, or the sized sets' ``synthetic_market`` / ``synthetic_msmt17``).
        num_train_ids / num_test_ids: identities in the training / query+gallery splits.
        num_cameras: 2..99 (written as ``c1`` .. ``c99`` in the file names).
        images_per_id: inclusive (min, max) images per identity; min >= 4 (2 cameras x 2 images).
            Not used when the split sizes are given.
        num_train_images / num_query / num_gallery: exact split sizes (all three or none):
            training images (>= 4 per training id), queries (2..num_cameras per test id: one per
            camera that sees the id) and gallery images of the test ids (>= num_query; the
            distractors come on top). None: each identity draws its size from ``images_per_id``.
        num_distractors: gallery images of unrelated people (pid 0).
        height / width: image size in pixels.
        camera_shift: strength of the per-camera colour model (white balance, gamma, hue, saturation,
            black/white levels); 0 disables it.
        noise: strength of the per-camera sensor noise, blur and resolution loss; 0 disables them.
        occlusion: probability that an image is partly occluded.
        seed: generation seed; same parameters and seed give byte-identical files.
        workers: processes that render a set not yet on disk; None: one per available core (one for
            sets under 1,000 images). The files do not depend on it.
        verbose, on_bad_image: see :class:`~mqreid.data.base.ReIDDataset` (the generated files are
            checked like any dataset's); ``verbose`` also shows a progress bar while rendering.
    """

    name = "synthetic"

    def __init__(
        self,
        root: str | Path,
        *,
        num_train_ids: int = 120,
        num_test_ids: int = 100,
        num_cameras: int = 6,
        images_per_id: tuple[int, int] = (8, 20),
        num_train_images: int | None = None,
        num_query: int | None = None,
        num_gallery: int | None = None,
        num_distractors: int = 100,
        height: int = 128,
        width: int = 64,
        camera_shift: float = 1.0,
        noise: float = 1.0,
        occlusion: float = 0.2,
        seed: int = 0,
        nuisances: Nuisances | dict | None = None,
        workers: int | None = None,
        verbose: bool = True,
        on_bad_image: str = "error",
    ) -> None:
        self.params = dict(num_train_ids=num_train_ids, num_test_ids=num_test_ids, num_cameras=num_cameras,
                           images_per_id=images_per_id, num_train_images=num_train_images, num_query=num_query,
                           num_gallery=num_gallery, num_distractors=num_distractors, height=height,
                           width=width, camera_shift=float(camera_shift), noise=float(noise),
                           occlusion=float(occlusion), seed=int(seed))
        _validate(**self.params)
        self.params["nuisances"] = _nuisances(nuisances)
        _camera_groups(num_cameras, self.params["nuisances"].groups)  # the groups add up to the cameras
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"{type(self).__name__}: workers must be None or >= 1, got {workers!r}")
        folder = Path(root) / self.name / self.folder_name(**self.params)
        if not folder.is_dir():
            _generate_atomically(folder, workers=workers, progress=verbose, desc=self.name, **self.params)
        # Junk rule: no junk; the distractors (pid 0) are in the gallery only.
        train, query, gallery = parse_market_layout(folder, _PATTERN, example="0001_c1s1_000000_00.jpg")
        super().__init__(train, query, gallery, root=folder, verbose=verbose, on_bad_image=on_bad_image)

    @staticmethod
    def folder_name(*, num_train_ids: int, num_test_ids: int, num_cameras: int, images_per_id: tuple[int, int],
                    num_distractors: int, height: int, width: int, camera_shift: float, noise: float,
                    occlusion: float, seed: int, num_train_images: int | None = None, num_query: int | None = None,
                    num_gallery: int | None = None, nuisances: Nuisances | None = None) -> str:
        """Folder name that encodes every generation parameter (and the renderer version)."""
        sizes = (f"_img{images_per_id[0]}-{images_per_id[1]}" if num_train_images is None
                 else f"_n{num_train_images}-{num_query}-{num_gallery}")
        return (f"v{_VERSION}_ids{num_train_ids}-{num_test_ids}_d{num_distractors}_cam{num_cameras}"
                f"{sizes}_{height}x{width}_shift{camera_shift!r}_noise{noise!r}_occ{occlusion!r}_seed{seed}"
                f"{(nuisances or Nuisances()).tag()}")


class _SizedSet(Synthetic):
    """:class:`Synthetic` with the class's ``defaults`` (any of them can be overridden)."""

    defaults: dict = {}

    def __init__(self, root: str | Path, **kwargs) -> None:
        super().__init__(root, **{**self.defaults, **kwargs})


class SyntheticMarket(_SizedSet):
    """:class:`Synthetic` at Market-1501's size and resolution (the defaults below; any can be overridden).

    751 training ids with 12,936 images, 750 test ids with 3,368 queries and 13,120 gallery images, plus
    2,793 distractors (Market-1501's 15,913 gallery images in all), 6 cameras, 256x128, the benchmark's
    camera model (camera_shift 0.3, noise 0.3, occlusion 0.1). ``dataset=synthetic_market``."""

    name = "synthetic_market"
    defaults = dict(num_train_ids=751, num_test_ids=750, num_cameras=6, num_train_images=12936, num_query=3368,
                    num_gallery=13120, num_distractors=2793, height=256, width=128, camera_shift=0.3, noise=0.3,
                    occlusion=0.1)


class SyntheticMSMT17(_SizedSet):
    """:class:`Synthetic` at MSMT17's size and resolution (the defaults below; any can be overridden).

    1,041 training ids with 32,621 images, 3,060 test ids with 11,659 queries and 82,161 gallery images,
    no distractors, 15 cameras, 256x128, the benchmark's camera model. ``dataset=synthetic_msmt17``."""

    name = "synthetic_msmt17"
    defaults = dict(num_train_ids=1041, num_test_ids=3060, num_cameras=15, num_train_images=32621,
                    num_query=11659, num_gallery=82161, num_distractors=0, height=256, width=128, camera_shift=0.3,
                    noise=0.3, occlusion=0.1)


class SyntheticHard(_SizedSet):
    """:class:`Synthetic` with the nuisances of harder data (:class:`Nuisances`), sized for a CPU: 15
    cameras, stronger camera models, illuminants that change within a camera, tracklet bursts, look-alike
    identities, a long tail of images per identity, more box jitter and occlusion. The values below are
    frozen by the calibration of docs/benchmark-hard.md (the starting values with one outfit per identity;
    ``nuisances.outfits=2`` gives the uncalibrated start). ``dataset=synthetic_hard``, trained with the
    synthetic recipe."""

    name = "synthetic_hard"
    defaults = dict(num_train_ids=350, num_test_ids=300, num_cameras=15, num_train_images=7000, num_query=900,
                    num_gallery=3600, num_distractors=500, height=128, width=64, camera_shift=0.8, noise=0.5,
                    occlusion=0.2, nuisances=dict(time_slots=3, outfits=1, burst=4, lookalikes=0.15, box_jitter=1.5,
                                                  count_spread=1.0))


class SyntheticV2(_SizedSet):
    """The Market-like set of benchmark v2 (docs/benchmark-v2.md): the default set's sizes and camera model (120
    training ids, 100 test ids, 6 cameras in one group, one session) with the v2 nuisances that do not need
    groups: backgrounds drawn per visit from one pool (no camera has a background of its own), cast shadows,
    a light level that clips or darkens, noise that grows in low light. Frozen at calibration candidate C1
    (bench/results/v2/calibration): camera_shift 0.2, noise 0.4, shadows 0.3. ``dataset=synthetic_v2``."""

    name = "synthetic_v2"
    defaults = dict(num_train_ids=120, num_test_ids=100, num_cameras=6, num_distractors=100, height=128, width=64,
                    camera_shift=0.2, noise=0.4, occlusion=0.1,
                    nuisances=dict(shadows=0.3, exposure=0.15, low_light_noise=1.0, background_pool=8))


class SyntheticV2Hard(_SizedSet):
    """The MSMT-like set of benchmark v2 (docs/benchmark-v2.md), at the first hard variant's sizes: 15 cameras
    in two groups (12 outdoor, 3 indoor) with their own sites, light spectra, sensors and viewpoints; 12 sessions
    of light shared by a group's cameras, each identity mostly in one; identities walking a camera ring
    (two neighbours on either side, moves between the groups rare); backgrounds per visit from the group's
    pool; shadows, clipping and low-light noise; and the first variant's bursts, look-alikes, box jitter and
    long tail. Frozen at calibration candidate C1 (bench/results/v2/calibration): camera_shift 0.7, group_gap
    2.0, lookalikes 0.05, box_jitter 1.0. ``dataset=synthetic_v2_hard``."""

    name = "synthetic_v2_hard"
    defaults = dict(num_train_ids=350, num_test_ids=300, num_cameras=15, num_train_images=7000, num_query=900,
                    num_gallery=3600, num_distractors=500, height=128, width=64, camera_shift=0.7, noise=0.5,
                    occlusion=0.2,
                    nuisances=dict(burst=4, lookalikes=0.05, box_jitter=1.0, count_spread=1.0, groups=[12, 3],
                                   group_gap=2.0, sessions=12, session_strength=1.0, session_stay=0.85, shadows=0.4,
                                   exposure=0.35, low_light_noise=2.0, walk=2, cross_group=0.02,
                                   background_pool=8))


SYNTHETIC_SETS: dict[str, type[Synthetic]] = {cls.name: cls for cls in (Synthetic, SyntheticMarket, SyntheticMSMT17,
                                                                         SyntheticHard, SyntheticV2, SyntheticV2Hard)}


def _validate(*, num_train_ids, num_test_ids, num_cameras, images_per_id, num_train_images, num_query, num_gallery,
              num_distractors, height, width, camera_shift, noise, occlusion, seed, **_) -> None:
    def need(ok: bool, option: str, expected: str, value) -> None:
        if not ok:
            raise ValueError(f"Synthetic: {option} must be {expected}, got {value!r}")

    need(num_train_ids >= 1, "num_train_ids", ">= 1", num_train_ids)
    need(num_test_ids >= 1, "num_test_ids", ">= 1", num_test_ids)
    need(num_train_ids + num_test_ids <= 9999, "num_train_ids + num_test_ids", "<= 9999 (4-digit pids)",
         num_train_ids + num_test_ids)
    need(2 <= num_cameras <= 99, "num_cameras", "in 2..99", num_cameras)
    need(isinstance(images_per_id, Sequence) and not isinstance(images_per_id, str) and len(images_per_id) == 2
         and 4 <= images_per_id[0] <= images_per_id[1], "images_per_id", "(min, max) with 4 <= min <= max",
         images_per_id)
    sizes = {"num_train_images": num_train_images, "num_query": num_query, "num_gallery": num_gallery}
    given = [k for k, v in sizes.items() if v is not None]
    need(len(given) in (0, 3), "num_train_images, num_query, num_gallery", "all given or all None", sizes)
    if given:
        need(4 * num_train_ids <= num_train_images <= 999999 * num_train_ids, "num_train_images",
             f">= 4 per training id ({4 * num_train_ids})", num_train_images)
        need(2 * num_test_ids <= num_query <= num_cameras * num_test_ids, "num_query",
             f"2..num_cameras per test id ({2 * num_test_ids}..{num_cameras * num_test_ids})", num_query)
        need(num_query <= num_gallery <= 999999 * num_test_ids, "num_gallery", f">= num_query ({num_query})",
             num_gallery)
    need(0 <= num_distractors <= 999999, "num_distractors", "in 0..999999", num_distractors)
    need(height >= 16, "height", ">= 16", height)
    need(width >= 8, "width", ">= 8", width)
    need(camera_shift >= 0, "camera_shift", ">= 0", camera_shift)
    need(noise >= 0, "noise", ">= 0", noise)
    need(0 <= occlusion <= 1, "occlusion", "in [0, 1]", occlusion)
    need(seed >= 0, "seed", ">= 0", seed)


def _generate_atomically(folder: Path, **params) -> None:
    """Render into a temporary sibling folder, then rename it into place (never a half-written dataset)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        _generate(tmp, **params)
        os.replace(tmp, folder)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (isinstance(exc, OSError) and folder.is_dir()):  # else another process finished it first
            raise


_worker_renderer: _Renderer | None = None  # the renderer of a worker process


def _init_worker(out: str, params: dict) -> None:
    global _worker_renderer
    _worker_renderer = _Renderer(Path(out), **params)


def _run_in_worker(job: tuple) -> int:
    assert _worker_renderer is not None
    return _worker_renderer.run(job)


def _jobs(plan: list, num_distractors: int) -> list[tuple]:
    """The plan cut into jobs of about ``_JOB_IMAGES`` images (whole identities; distractors in ranges)."""
    size = _JOB_IMAGES
    jobs, chunk, n = [], [], 0
    for pid, images in plan:
        chunk.append((pid, images))
        n += len(images)
        if n >= size:
            jobs.append(("ids", chunk))
            chunk, n = [], 0
    if chunk:
        jobs.append(("ids", chunk))
    jobs += [("distractors", k, min(k + size, num_distractors)) for k in range(0, num_distractors, size)]
    return jobs


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _generate(out: Path, *, workers: int | None = None, progress: bool = False, desc: str = "synthetic",
              **params) -> None:
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (out / split).mkdir()
    plan = _plan_set(**params)
    total = sum(len(images) for _, images in plan) + params["num_distractors"]
    jobs = _jobs(plan, params["num_distractors"])
    if workers is None:
        workers = 1 if total < _IN_PROCESS_BELOW else _available_cores()
    workers = max(1, min(workers, len(jobs)))
    log.info("%s: rendering %d images (%d process%s)", desc, total, workers, "" if workers == 1 else "es")
    with tqdm(total=total, desc=f"rendering {desc}", unit="img", disable=not progress, leave=False) as bar:
        if workers == 1:
            renderer = _Renderer(out, **params)
            for job in jobs:
                bar.update(renderer.run(job))
            return
        # fork where the platform has it: a spawned worker would re-import torch (seconds) through the package
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                   initializer=_init_worker, initargs=(str(out), params))
        try:
            for future in as_completed([pool.submit(_run_in_worker, job) for job in jobs]):
                bar.update(future.result())
        finally:  # on an error, drop the jobs not started and wait for the running ones before cleaning up
            pool.shutdown(wait=True, cancel_futures=True)


