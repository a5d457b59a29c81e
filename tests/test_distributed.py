"""Two gloo processes on the CPU: all-gathered class queues, and outliers of each rank's own
(MODEL.VOS.PER_RANK_OUTLIERS) that a resumed run redraws.

The workers are started with detectron2's ``launch`` exactly as ``tools/train_net.py --num-gpus
2`` does. On a machine without CUDA it spawns the processes with
``torch.multiprocessing.start_processes`` and initialises the process group with gloo; the
tests hide CUDA from the workers so that a GPU machine takes that same route. An exception in
a worker makes ``launch`` raise (with the worker's traceback) after stopping the other worker.

Spawning costs most of the time here (each process imports torch and detectron2 again), so
one launch runs everything: the all-gather cases first, then a short DDP training run. Each
part writes its results to files that the tests read.
"""
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from detectron2.engine import launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vos_det.config import load_config
from vos_det.modeling.vos.distributed import all_gather_variable_length
from vos_det.modeling.vos.feature_queues import ClassFeatureQueues

WORLD_SIZE = 2
# launch's default is 30 minutes: a collective that one rank never joins fails quickly here.
COLLECTIVE_TIMEOUT = timedelta(seconds=120)

# all_gather_variable_length: per case, the number of rows each rank contributes.
GATHER_LENGTHS = ((3, 5), (0, 2), (4, 0), (0, 0))

# The distributed training run.
NUM_CLASSES = 5
# Classes of the ground-truth boxes of each rank: disjoint, so that without the all-gather
# no rank would ever fill all the class queues (and synthesis would never start).
RANK_CLASSES = ((0, 1, 2), (3, 4))
IMAGES_PER_RANK = 2
BOXES_PER_CLASS = 2
IMAGE_SIZE = 128
SAMPLE_NUMBER = 4
STARTING_ITER = 2
SAMPLE_FROM = 200
NUM_ITERATIONS = 5
SYNTHESIS_SEED = 3


def _rank_rows(rank, length):
    """Rows that say which rank made them: features (length, 2, 3) and labels (length,)."""
    features = torch.arange(length * 6, dtype=torch.float32).reshape(length, 2, 3) + 1000.0 * rank
    labels = torch.full((length,), rank, dtype=torch.long) * 100 + torch.arange(length)
    return features, labels


def _rank_batch(rank, generator):
    """Random images whose boxes hold only this rank's classes (every one of them)."""
    batch = []
    classes = torch.tensor(RANK_CLASSES[rank]).repeat(BOXES_PER_CLASS)
    for _ in range(IMAGES_PER_RANK):
        instances = Instances((IMAGE_SIZE, IMAGE_SIZE))
        corners = torch.randint(0, IMAGE_SIZE // 2, (len(classes), 2), generator=generator).float()
        sizes = torch.randint(16, IMAGE_SIZE // 2, (len(classes), 2), generator=generator).float()
        instances.gt_boxes = Boxes(torch.cat([corners, corners + sizes], dim=1))
        instances.gt_classes = classes.clone()
        image = torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE), generator=generator).float()
        batch.append({"image": image, "instances": instances, "height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return batch


def _gather(rank):
    results = {"backend": dist.get_backend()}
    for lengths in GATHER_LENGTHS:
        results[lengths] = all_gather_variable_length(*_rank_rows(rank, lengths[rank]))
    return results


def _train(rank):
    # Different initial weights per rank: DDP must broadcast rank 0's.
    torch.manual_seed(rank)
    cfg = load_config(
        "digits_vos_tiny.yaml",
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.VOS.SAMPLE_NUMBER", str(SAMPLE_NUMBER),
            "MODEL.VOS.STARTING_ITER", str(STARTING_ITER),
            "MODEL.VOS.SAMPLE_FROM", str(SAMPLE_FROM),
            "MODEL.VOS.SYNTHESIS_SEED", str(SYNTHESIS_SEED),
        ],
    )
    model = build_model(cfg)
    predictor = model.roi_heads.box_predictor
    queues = predictor.feature_queues

    # Record what this rank hands to the queues, the outliers it synthesises, and the
    # predictor's state (its queues) when it synthesises the last ones.
    enqueued, outliers, last_state = [], {}, {}
    enqueue, synthesize_outliers = queues.enqueue, predictor.synthesize_outliers

    def recording_enqueue(features, labels, gather=True):
        enqueued.append((features.detach().clone(), labels.clone()))
        return enqueue(features, labels, gather=gather)

    def recording_synthesize_outliers(iteration):
        last_state.update({name: value.clone() for name, value in predictor.state_dict().items()})
        outliers[iteration] = synthesize_outliers(iteration)
        return outliers[iteration]

    queues.enqueue = recording_enqueue
    predictor.synthesize_outliers = recording_synthesize_outliers

    # As DefaultTrainer does, except for device_ids: create_ddp_model's default
    # [local_rank] is for CUDA modules only.
    ddp_model = create_ddp_model(model, broadcast_buffers=False, device_ids=None)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(1000 + rank)
    losses = []
    with EventStorage(0) as storage:
        for iteration in range(NUM_ITERATIONS):
            storage.iter = iteration
            loss_dict = ddp_model(_rank_batch(rank, generator))
            losses.append({name: value.detach().item() for name, value in loss_dict.items()})
            optimizer.zero_grad()
            sum(loss_dict.values()).backward()
            optimizer.step()
    return {
        "queues": {name: buffer.clone() for name, buffer in queues.named_buffers()},
        "enqueued": enqueued,
        "outliers": outliers,
        **_redraw(cfg, rank, last_state, NUM_ITERATIONS - 1),
        "losses": losses,
        "parameters": {name: p.detach().clone() for name, p in model.named_parameters()},
    }


def _redraw(cfg, rank, state, iteration):
    """The outliers of ``iteration`` drawn again by a new model given the recorded state, as a
    resumed run does: with per-rank outliers, and with PER_RANK_OUTLIERS False."""
    torch.manual_seed(100 + rank)  # other initial weights: only the loaded state may matter
    predictor = build_model(cfg).roi_heads.box_predictor
    redrawn = {}
    for per_rank in (True, False):
        predictor.load_state_dict(state)
        predictor.per_rank_outliers = per_rank
        redrawn["resumed_outliers" if per_rank else "shared_outliers"] = predictor.synthesize_outliers(iteration)
    return redrawn


def _worker(output_dir):
    """Run by every rank. Spawned processes find it by name: it lives at the top level of
    this module, which pytest puts on sys.path (spawn passes sys.path along)."""
    torch.set_num_threads(1)
    rank = dist.get_rank()
    torch.save(_gather(rank), os.path.join(output_dir, f"gather_rank{rank}.pt"))
    torch.save(_train(rank), os.path.join(output_dir, f"train_rank{rank}.pt"))


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory, local_dist_url):
    """Runs :func:`_worker` on 2 gloo ranks; returns a loader of one part's per-rank results."""
    output_dir = tmp_path_factory.mktemp("distributed")
    error = None
    with pytest.MonkeyPatch.context() as monkeypatch:
        # With CUDA visible, launch would pick NCCL and one GPU per process; the model and
        # the tensors here are on the CPU, which needs gloo.
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        try:
            launch(
                _worker,
                WORLD_SIZE,
                num_machines=1,
                machine_rank=0,
                dist_url=local_dist_url(),
                args=(str(output_dir),),
                timeout=COLLECTIVE_TIMEOUT,
            )
        except Exception as exception:  # reported by the tests whose part did not finish
            error = exception

    def load(part):
        paths = [output_dir / f"{part}_rank{rank}.pt" for rank in range(WORLD_SIZE)]
        if error is not None and not all(path.exists() for path in paths):
            raise RuntimeError(f"a distributed worker failed before writing its {part!r} results") from error
        return [torch.load(path) for path in paths]

    return load


def test_all_gather_variable_length_concatenates_in_rank_order(distributed_run):
    results = distributed_run("gather")
    assert [r["backend"] for r in results] == ["gloo"] * WORLD_SIZE
    for lengths in GATHER_LENGTHS:
        parts = [_rank_rows(rank, n) for rank, n in enumerate(lengths)]
        expected_features = torch.cat([features for features, _ in parts])
        expected_labels = torch.cat([labels for _, labels in parts])
        for rank, result in enumerate(results):
            features, labels = result[lengths]
            assert features.shape == (sum(lengths), 2, 3), (lengths, rank)
            assert torch.equal(features, expected_features), (lengths, rank)
            assert torch.equal(labels, expected_labels), (lengths, rank)
            assert features.dtype == torch.float32 and labels.dtype == torch.long


def test_ranks_hold_identical_queues_of_all_ranks_features(distributed_run):
    first, second = distributed_run("train")
    for name, buffer in first["queues"].items():
        assert torch.equal(buffer, second["queues"][name]), name
    assert torch.equal(first["queues"]["counts"], torch.full((NUM_CLASSES,), SAMPLE_NUMBER))

    # Each rank enqueued only the features of its own classes, once per iteration...
    assert len(first["enqueued"]) == len(second["enqueued"]) == NUM_ITERATIONS
    for rank, result in enumerate((first, second)):
        labels = torch.cat([labels for _, labels in result["enqueued"]])
        assert set(labels.tolist()) == set(RANK_CLASSES[rank])
    # ...and the queues are those of one process fed, at every iteration, rank 0's then
    # rank 1's features (the same calls of gaussian() keep the statistics comparable).
    reference = ClassFeatureQueues(NUM_CLASSES, SAMPLE_NUMBER, first["queues"]["features"].shape[2])
    for iteration, (rank0, rank1) in enumerate(zip(first["enqueued"], second["enqueued"])):
        reference.enqueue(torch.cat([rank0[0], rank1[0]]), torch.cat([rank0[1], rank1[1]]), gather=False)
        if iteration >= STARTING_ITER and reference.all_full():
            reference.gaussian()
    for name, buffer in reference.named_buffers():
        if buffer.dtype == torch.float64:
            assert torch.allclose(buffer, first["queues"][name], rtol=1e-9, atol=1e-9), name
        else:
            assert torch.equal(buffer, first["queues"][name]), name


def test_each_rank_synthesises_its_own_outliers(distributed_run):
    first, second = distributed_run("train")
    # Synthesis needs every queue full, which no rank's own classes achieve: the all-gather
    # is what starts it, at STARTING_ITER on both ranks.
    assert sorted(first["outliers"]) == sorted(second["outliers"]) == list(range(STARTING_ITER, NUM_ITERATIONS))
    for iteration, outliers in first["outliers"].items():
        assert outliers is not None and outliers.shape[0] == NUM_CLASSES
        assert torch.isfinite(outliers).all() and torch.isfinite(second["outliers"][iteration]).all()
        # Same queues (hence Gaussians) on both ranks, other draws (PER_RANK_OUTLIERS True).
        assert not torch.isclose(outliers, second["outliers"][iteration]).any(), iteration
    # Each iteration draws other outliers (the seed includes the iteration).
    assert not torch.equal(first["outliers"][STARTING_ITER], first["outliers"][STARTING_ITER + 1])


def test_a_resumed_run_redraws_each_ranks_outliers(distributed_run):
    last = NUM_ITERATIONS - 1
    for result in distributed_run("train"):
        assert torch.equal(result["resumed_outliers"], result["outliers"][last])


def test_rank_zero_draws_the_single_process_outliers(distributed_run):
    first, second = distributed_run("train")
    last = NUM_ITERATIONS - 1
    # PER_RANK_OUTLIERS False: every rank draws rank 0's outliers, those of a single process
    # (whose seed ignores the rank), so turning per-rank outliers on changes nothing there.
    assert torch.equal(first["shared_outliers"], second["shared_outliers"])
    assert torch.equal(first["shared_outliers"], first["outliers"][last])


def test_losses_are_finite_and_the_uncertainty_loss_starts(distributed_run):
    results = distributed_run("train")
    for result in results:
        losses = result["losses"]
        assert len(losses) == NUM_ITERATIONS
        assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in losses)
        assert [step["loss_vos"] > 0.0 for step in losses] == [
            iteration >= STARTING_ITER for iteration in range(NUM_ITERATIONS)
        ]
    # The ranks trained on different images.
    assert results[0]["losses"][0] != results[1]["losses"][0]


def test_ddp_keeps_parameters_identical_across_ranks(distributed_run):
    first, second = distributed_run("train")
    assert set(first["parameters"]) == set(second["parameters"])
    assert any(name.endswith("energy_weights") for name in first["parameters"])
    for name, parameter in first["parameters"].items():
        assert torch.equal(parameter, second["parameters"][name]), name


def test_single_process_seed_is_the_one_before_per_rank_outliers():
    """Rank 0 adds nothing to the seed: single-process training draws what it always drew."""
    cfg = load_config("digits_vos_tiny.yaml", ["MODEL.DEVICE", "cpu", "MODEL.VOS.SYNTHESIS_SEED", str(SYNTHESIS_SEED)])
    assert cfg.MODEL.VOS.PER_RANK_OUTLIERS
    predictor = build_model(cfg).roi_heads.box_predictor
    assert predictor.synthesis_seed_at(7) == SYNTHESIS_SEED * 1_000_003 + 7
