"""fixtures.gguf_read_once: one GGUF reader per file and one tensor name map per architecture
inside the block, the library's own functions outside it; SmolLM2's reference load is unchanged."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import transformers.modeling_gguf_pytorch_utils as gguf_utils

from fixtures.gguf_read_once import gguf_read_once


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-block llama GGUF with one metadata array and one tensor."""
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_one_reader_per_file_and_one_name_map_per_architecture(small_gguf: Path) -> None:
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with gguf_read_once() as built:
        first, second = gguf.GGUFReader(small_gguf), gguf.GGUFReader(str(small_gguf))
        assert first is second and built["readers"] == 1
        assert [t.name for t in first.tensors] == ["token_embd.weight"]
        assert np.array_equal(first.tensors[0].data, np.arange(12, dtype=np.float32).reshape(3, 4))
        maps = [gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) for _ in range(3)]
        assert maps[0] is maps[1] is maps[2] and built["name_maps"] == 1
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3) is not maps[0] and built["name_maps"] == 2
        assert maps[0].get_name("model.embed_tokens") == "token_embd"
        assert gguf.GGUFReader(small_gguf, "c") is not first  # a copy-on-write map is not shared
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader_class, name_map)
    assert gguf.GGUFReader(small_gguf) is not first


def test_a_shared_reader_reads_the_bytes_into_memory_and_parses_as_the_library(small_gguf: Path) -> None:
    """Inside the block the reader's data is the file's bytes, read-only and in memory (no memmap);
    its fields and tensors equal the library's own reader's."""
    plain = gguf.GGUFReader(small_gguf)
    with gguf_read_once():
        shared = gguf.GGUFReader(small_gguf)
        assert type(shared.data) is np.ndarray and not shared.data.flags.writeable
        assert np.array_equal(shared.data, np.fromfile(small_gguf, dtype=np.uint8))
        assert isinstance(gguf.GGUFReader(small_gguf, "c").data, np.memmap)  # a copy-on-write map stays a map
    assert isinstance(plain.data, np.memmap) and isinstance(gguf.GGUFReader(small_gguf).data, np.memmap)
    assert list(shared.fields) == list(plain.fields)
    for name, field in plain.fields.items():
        assert field.types == shared.fields[name].types and field.data == shared.fields[name].data, name
        assert all(np.array_equal(a, b) for a, b in zip(field.parts, shared.fields[name].parts)), name
    assert [t.name for t in shared.tensors] == [t.name for t in plain.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(shared.tensors, plain.tensors))
    assert shared.fields["tokenizer.ggml.tokens"].contents() == ["a", "b", "c"]


def test_the_library_is_restored_after_an_error(small_gguf: Path) -> None:
    reader_class, reader_numpy, checkpoint = gguf.GGUFReader, gguf.gguf_reader.np, gguf_utils.load_gguf_checkpoint
    with pytest.raises(RuntimeError, match="inside"):
        with gguf_read_once():
            gguf.GGUFReader(small_gguf)
            raise RuntimeError("inside")
    assert gguf.GGUFReader is reader_class and gguf.gguf_reader.np is reader_numpy is np
    assert gguf_utils.load_gguf_checkpoint is checkpoint


def test_metadata_is_parsed_once_and_each_call_gets_its_own_copy(small_gguf: Path) -> None:
    """transformers' metadata load (``return_tensors=False``) runs once per file inside the block and
    gives what the library gives; changing one call's dicts changes no other call's."""
    plain = gguf_utils.load_gguf_checkpoint(str(small_gguf), return_tensors=False)
    assert plain["config"]["num_hidden_layers"] == 2 and plain["tokenizer"]["tokens"] == ["a", "b", "c"]
    with gguf_read_once() as built:
        first = gguf_utils.load_gguf_checkpoint(str(small_gguf), return_tensors=False)
        first["config"]["num_hidden_layers"] = 5
        first["tokenizer"]["tokens"].append("d")
        second = gguf_utils.load_gguf_checkpoint(small_gguf)
        assert built["metadata"] == 1
        other = gguf_utils.load_gguf_checkpoint(str(small_gguf), torch_dtype=np.float32)  # other arguments: the library's own
        assert built["metadata"] == 1 and other == plain
    assert second == plain


@pytest.mark.slow
def test_smollm2_reference_is_the_unmemoised_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' GGUF load of SmolLM2 with the metadata parsed once equals the plain load
    (every tensor, the config, the vocabulary); slow: two 20-s loads."""
    import contextlib

    import torch

    import fixtures.smollm2 as smollm2

    memo_model, memo_tokenizer = smollm2.load_smollm2_transformers()
    monkeypatch.setattr(smollm2, "gguf_read_once", contextlib.nullcontext)
    plain_model, plain_tokenizer = smollm2.load_smollm2_transformers()
    memo, plain = memo_model.state_dict(), plain_model.state_dict()
    assert memo.keys() == plain.keys() and all(torch.equal(memo[k], plain[k]) for k in memo)
    assert memo_model.config.to_dict() == plain_model.config.to_dict()
    assert memo_tokenizer.get_vocab() == plain_tokenizer.get_vocab()
