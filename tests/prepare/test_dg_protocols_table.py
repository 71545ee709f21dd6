"""The leave-one-domain-out protocol table and the release counts it carries."""

from __future__ import annotations

import pytest

from metareid.data.reid.market1501 import Market1501
from metareid.data.reid.protocols import PROTOCOLS, RELEASE_COUNTS, DGProtocol, get_protocol
from metareid.data.reid.release_formats import CUHK03, CUHKSYSU, MSMT17


def test_four_protocols_cover_every_target():
    assert {p.short_name for p in PROTOCOLS.values()} == {
        "CS+M+MS→C3",
        "CS+M+C3→MS",
        "CS+MS+C3→M",
    }
    assert len(PROTOCOLS) == 4
    assert PROTOCOLS["mix_to_cuhk03_detected"].cuhk03_boxes == "detected"
    for protocol in PROTOCOLS.values():
        assert len(protocol.sources) == 3 and protocol.target not in protocol.sources
        assert not protocol.combineall


def test_released_config_totals_match_the_reference_iteration_count():
    # dr50.md §4.2: 77,758 images and 13,726 classes → ⌊77,758 / 64⌋ = 1,214 iterations/epoch.
    images, identities = PROTOCOLS["mix_to_cuhk03"].train_totals()
    assert (images, identities) == (77_758, 13_726)
    assert images // 64 == 1_214
    assert PROTOCOLS["mix_to_cuhk03"].sources[0] == "cuhksysu"  # domain 0 as in DATASETS.NAMES


def test_cuhk03_source_variants_use_the_chosen_boxes():
    labeled = get_protocol("mix_to_market1501")
    detected = get_protocol("mix_to_market1501", cuhk03_boxes="detected")
    assert labeled.train_totals()[0] - detected.train_totals()[0] == 7_368 - 7_365
    assert detected.expected_counts()["cuhk03"] == RELEASE_COUNTS["cuhk03_detected"]
    assert get_protocol("mix_to_msmt17", combineall=True).train_totals() is None


def test_invalid_protocols_are_rejected():
    with pytest.raises(ValueError, match="also a source"):
        DGProtocol("x", sources=("market1501", "msmt17"), target="msmt17")
    with pytest.raises(ValueError, match="cannot be a target"):
        DGProtocol("x", sources=("market1501",), target="cuhksysu")
    with pytest.raises(KeyError, match="mix_to_cuhk03"):
        get_protocol("mix_to_duke")


def test_protocol_dataset_names_are_the_loaders_domain_names():
    names = {name for p in PROTOCOLS.values() for name in (*p.sources, p.target)}
    loaders = (Market1501, MSMT17, CUHK03, CUHKSYSU)
    assert names == {loader.default_name for loader in loaders}


def test_release_formats_are_reachable_by_name():
    from metareid.data.reid import release_formats as reid_formats
    from metareid.data.reid.registry import DATASET_FACTORIES, load_reid_dataset

    with pytest.raises(FileNotFoundError):
        load_reid_dataset("MSMT17", "/nonexistent/msmt17")
    assert DATASET_FACTORIES["cuhk03"] is reid_formats.CUHK03
    assert DATASET_FACTORIES["cuhksysu"] is reid_formats.CUHKSYSU
    assert DATASET_FACTORIES["dukemtmc"] is reid_formats.DukeMTMC
