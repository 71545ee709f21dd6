import warnings
from collections import Counter
from itertools import islice

import pytest
import pytorch_lightning as pl
import torch

from metareid.data.reid.datamodule import ReIDDataModule
from metareid.data.reid.synthetic import generate_synthetic_reid

SIZE = (32, 16)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_reid_dm")
    generate_synthetic_reid(
        root, ids_per_domain=10, cameras=2, images_per_id_per_camera=2, size=SIZE, seed=0
    )
    return root


def make_datamodule(root, **overrides):
    options = dict(
        sources=[
            {"name": "synthetic", "root": str(root), "domain": d} for d in ("synA", "synB", "synC")
        ],
        targets=[{"name": "synthetic", "root": str(root / "synD")}],
        image_size=SIZE,
        batch_size=8,
        num_instances=2,
        domain_batch_size=4,
        num_workers=0,
        test_batch_size=16,
        seed=0,
    )
    options.update(overrides)
    return ReIDDataModule(**options)


def test_training_batches_are_pk_per_loader(synthetic_root):
    datamodule = make_datamodule(synthetic_root)
    datamodule.setup("fit")
    assert datamodule.num_classes_per_domain == [5, 5, 5]
    assert datamodule.source_names == ["synA", "synB", "synC"]
    merged = next(iter(datamodule.train_dataloader()))
    assert len(datamodule.train_dataloader()) == datamodule.iters_per_epoch == 60 // 8  # 3×5 ids×4
    assert merged["image"].shape == (8, 3, *SIZE) and merged["image"].dtype == torch.uint8
    assert set(Counter(merged["label"].tolist()).values()) == {2}  # 4 ids x K=2
    for domain_id, loader in enumerate(datamodule.domain_dataloaders()):
        single = next(iter(loader))
        assert single["image"].shape == (4, 3, *SIZE)
        assert set(single["domain_id"].tolist()) == {domain_id}
        labels = single["label"]
        assert labels.min() >= 5 * domain_id and labels.max() < 5 * (domain_id + 1)
        assert set(Counter(labels.tolist()).values()) == {2}
    # merged batch: domain ids agree with the label ranges
    assert torch.equal(merged["domain_id"], merged["label"] // 5)


def test_evaluation_loader_per_target(synthetic_root):
    datamodule = make_datamodule(
        synthetic_root,
        targets=[
            {"name": "synthetic", "root": str(synthetic_root), "domain": "synD"},
            {"name": "synthetic", "root": str(synthetic_root), "domain": "synC"},
        ],
    )
    datamodule.setup("validate")
    assert datamodule.train_set is None  # evaluation does not index the sources
    assert datamodule.target_names == ["synD", "synC"]
    loaders = datamodule.val_dataloader()
    assert len(loaders) == 2
    batches = list(loaders[0])
    is_query = torch.cat([b["is_query"] for b in batches])
    pids = torch.cat([b["pid"] for b in batches])
    # 5 test ids x 2 cameras of queries first, then 5 x 2 gallery + 8 distractors (junk dropped)
    assert is_query.tolist() == [True] * 10 + [False] * 18
    assert set(pids[:10].tolist()) == {6, 7, 8, 9, 10}
    assert (pids[10:] == 0).sum() == 8
    assert batches[0]["image"].shape == (16, 3, *SIZE)


def test_configuration_errors_name_the_key(synthetic_root):
    with pytest.raises(ValueError, match="data.batch_size=9 must be a multiple"):
        make_datamodule(synthetic_root, batch_size=9)
    with pytest.raises(ValueError, match="domain_batch_size=12 .* needs 6 identities per domain"):
        make_datamodule(synthetic_root, domain_batch_size=12).setup("fit")
    with pytest.raises(ValueError, match=r"data.sources\[0\] lacks root"):
        make_datamodule(synthetic_root, sources=[{"name": "synthetic"}]).setup("fit")
    repeated = [{"name": "synthetic", "root": str(synthetic_root / "synA")}] * 2
    with pytest.raises(ValueError, match="repeated domain names"):
        make_datamodule(synthetic_root, sources=repeated).setup("fit")
    renamed = [dict(entry, domain_name=f"copy{i}") for i, entry in enumerate(repeated)]
    assert make_datamodule(synthetic_root, sources=renamed).source_names == ["copy0", "copy1"]


def test_prepare_data_generates_the_synthetic_tree(tmp_path):
    synthetic = dict(root=str(tmp_path), ids_per_domain=4, cameras=2, size=SIZE)
    datamodule = make_datamodule(tmp_path, domain_batch_size=2, synthetic=synthetic)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.num_classes_per_domain == [2, 2, 2]


class RecordingModule(pl.LightningModule):
    """Records the labels of every training batch; the loss only needs a parameter to step."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["label"].tolist())
        return self.weight**2 + batch["image"].float().mean() * 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(datamodule, steps, ckpt_path=None, save_to=None):
    module = RecordingModule()
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return module.seen


def test_trainer_runs_and_resume_continues_every_stream(synthetic_root, tmp_path):
    uninterrupted = fit(make_datamodule(synthetic_root), steps=4)
    assert len(uninterrupted) == 4
    assert uninterrupted[0] != uninterrupted[1]
    first_half = fit(make_datamodule(synthetic_root), steps=2, save_to=tmp_path / "half.ckpt")
    second_half = fit(make_datamodule(synthetic_root), steps=4, ckpt_path=tmp_path / "half.ckpt")
    assert first_half + second_half == uninterrupted


def test_resume_from_a_batch_end_checkpoint_neither_replays_nor_skips(synthetic_root, tmp_path):
    """A checkpoint written at a batch end (ModelCheckpoint every_n_train_steps) has processed
    that batch before Lightning counts it completed; the stream resumes after it."""
    uninterrupted = fit(make_datamodule(synthetic_root), steps=4)
    module = RecordingModule()
    saver = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}"
    )
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        callbacks=[saver],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=make_datamodule(synthetic_root))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(make_datamodule(synthetic_root), steps=4, ckpt_path=tmp_path / "step=1.ckpt")
    assert module.seen[:1] + resumed == uninterrupted
    # the loader is rebuilt at its position, which Lightning is told (no "not resumable" warning)
    assert not [w for w in caught if "dataloader is not resumable" in str(w.message)]


def test_domain_streams_resume_from_the_meta_steps_taken(synthetic_root):
    datamodule = make_datamodule(synthetic_root)
    labels = [
        [batch["label"].tolist() for batch in islice(loader, 3)]
        for loader in datamodule.domain_dataloaders()
    ]
    resumed = [next(iter(loader))["label"].tolist() for loader in datamodule.domain_dataloaders(2)]
    assert resumed == [stream[2] for stream in labels]
    assert labels[0][0] != labels[1][0]  # independent seeds per domain


def test_combineall_adds_query_and_gallery_as_new_identities(synthetic_root):
    from metareid.data.reid.datamodule import combine_all
    from metareid.data.reid.registry import load_reid_dataset

    dataset = load_reid_dataset("synthetic", synthetic_root / "synA")
    combined = combine_all(dataset)
    train_pids = {item.pid for item in dataset.train}
    test_pids = {item.pid for item in [*dataset.query, *dataset.gallery]}
    new_pids = {item.pid for item in combined[len(dataset.train) :]}
    assert len(combined) == len(dataset.train) + len(dataset.query) + len(dataset.gallery)
    assert len(new_pids) == len(test_pids) and not new_pids & train_pids
    assert min(new_pids) == max(train_pids) + 1

    datamodule = make_datamodule(
        synthetic_root,
        sources=[{"name": "synthetic", "root": str(synthetic_root / "synA"), "combineall": True}],
    )
    assert datamodule.num_classes_per_domain == [len(train_pids) + len(test_pids)]
