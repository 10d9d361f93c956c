"""Quality measured where the model runs: the reference the host writes and the device
reads (``edgeshrink.reference/1``), and the figures both sides compute from it.

The host imports this file and the agent loads it from beside itself on the device, so
the file format and the formulas are written once: the host's evaluators summarise their
per-token and per-sample figures with the same functions the device uses. Standard library
only at top level, Python 3.9; numpy is handed in (``np``) by callers that have it (every
runtime the agent drives brings it).

The file
    8 bytes magic ``b"ESQREF1\\n"``, the header's length (4 bytes, little-endian), the header
    (JSON: schema, kind, the base model, the settings, and each array's dtype, shape and
    offset), then the arrays, little-endian, each at its offset from the end of the header.
    A reader checks every length and count against the file before it allocates anything.

A language model (kind ``llm-text``)
    The tokens of the text (cut into chunks of ``n_ctx``, each starting with BOS when the
    vocabulary asks for it, llama-perplexity's way) and, for every scored position, the
    base model's ``top_k`` largest log-probabilities with their token ids, the probability
    mass of every other token (``tail_mass``), ``tail_samples`` tokens drawn from that rest
    in proportion to their probability (stratified) with their log-probabilities, and the
    log-probability of the token that follows. The device needs neither the base model nor
    a tokenizer: it checks that the candidate's vocabulary is the one the reference was
    made with (a fingerprint of every token's text).

    KL divergence from the reference. The top-k entries are exact. Merging the rest into one
    outcome (``kld_topk_rest``) can only lower the divergence (log-sum inequality): it is a
    lower bound, short by ``r * KL(P_rest || Q_rest)`` (r: the rest's mass; P, Q: base and
    candidate within the rest). For SmolLM2-135M (49152 tokens) that gap was 18% of the
    KLD at k = 32 and still 5% at k = 256: small models spread their mass thinly, so no k
    that keeps the reference small makes it negligible. The samples estimate it instead:
    ``KL(P_rest || Q_rest) = E_P[(rho - 1) - log rho]`` with ``rho = Q_rest / P_rest`` (the
    ``rho - 1`` term has mean 0 and cancels most of the noise when Q is close to P), which
    is unbiased; its standard error is computed from the samples' spread and reported
    (``kld_sampling_error``, conservative: the samples are stratified). Terms where the
    base's log-probability is below -16 are skipped among the top k, as llama.cpp skips
    them; in the rest they are counted (measured: 0.1-0.2% of the KLD).

Outputs of other models (kind ``outputs``)
    The inputs the base ran on, one group per feed (``feed/<i>/<input>``), the base's
    outputs over all of them (``output/<name>``) and the labels when there are any.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct

REFERENCE_SCHEMA = "edgeshrink.reference/1"
MAGIC = b"ESQREF1\n"
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAYS = 1 << 14
MAX_DIMS = 8
# The dtypes a reference may hold (numpy's dtype.str), and their item sizes.
DTYPES = {
    "<f2": 2, "<f4": 4, "<f8": 8, "|i1": 1, "|u1": 1, "<i2": 2, "<u2": 2, "<i4": 4,
    "<u4": 4, "<i8": 8, "<u8": 8, "|b1": 1,
}  # fmt: skip
KINDS = ("llm-text", "outputs")

TOP_K = 32
TAIL_SAMPLES = 16
LOG_PROB_FLOOR = -16.0
ROWS_PER_BLOCK = 32  # candidate rows turned into log-probabilities at a time (memory)


# The ``quality`` section of the agent's document, declared once: the host checks what a
# device printed against these (edgeshrink.bench.document_problems). "estimate" is
# {"value", "uncertainty"}; the section of a model judged by its outputs also holds lists of
# "metrics" and "outputs" (OUTPUT_FIELDS each).
LLM_QUALITY_FIELDS = {
    "kind": "text", "n_scored": "integer", "n_ctx": "integer", "n_chunks": "integer",
    "top_k": "integer", "tail_samples": "integer", "text_sha256": "text",
    "ppl_base": "estimate", "ppl": "estimate", "ppl_ratio": "estimate", "ppl_diff": "estimate",
    "ln_ppl_ratio": "estimate", "kld_mean": "estimate", "same_top": "estimate",
    "rms_dp": "estimate", "kld_median": "number", "kld_p99": "number", "kld_max": "number",
    "kld_topk_rest": "number", "kld_sampling_error": "number", "seconds": "number",
}  # fmt: skip
OUTPUTS_QUALITY_FIELDS = {
    "kind": "text", "n_samples": "integer", "inputs": "text", "labels": "text",
    "seconds": "number",
}  # fmt: skip
METRIC_FIELDS = {"name": "text", "value": "number", "reference": "number", "output": "text"}
OUTPUT_FIELDS = {
    "name": "text", "max_abs_error": "number", "mean_abs_error": "number",
    "max_abs_reference": "number", "cosine_mean": "number", "cosine_min": "number",
    "top1_agreement": "number",
}  # fmt: skip
REFERENCE_FIELDS = {"sha256": "text", "bytes": "integer", "path": "text"}


class ReferenceError(Exception):
    """A reference that cannot be used: ``kind`` names the problem for the agent's document."""

    def __init__(self, kind: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint


# --------------------------------------------------------------------------- the file


def write_reference(handle, header: dict, arrays: dict) -> int:
    """Write ``header`` and ``arrays`` (name -> numpy array) to a binary file; returns the
    bytes written. The header's ``arrays`` entry is filled in here."""
    described, offset, blobs = {}, 0, []
    for name, array in arrays.items():
        data = array.astype(array.dtype.newbyteorder("<"), copy=False)
        if data.dtype.str not in DTYPES:
            raise ValueError(
                f"array {name!r} has dtype {data.dtype.str}, not one of {list(DTYPES)}"
            )
        raw = data.tobytes(order="C")
        described[name] = {"dtype": data.dtype.str, "shape": list(data.shape), "offset": offset}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps({**header, "schema": REFERENCE_SCHEMA, "arrays": described}, sort_keys=True)
    encoded = text.encode("utf-8")
    handle.write(MAGIC + struct.pack("<I", len(encoded)) + encoded)
    for raw in blobs:
        handle.write(raw)
    return len(MAGIC) + 4 + len(encoded) + offset


def _bad(message: str) -> ReferenceError:
    return ReferenceError(
        "reference_invalid",
        message,
        "make the reference again on the host (edgeshrink eval with a target pushes a fresh one)",
    )


def read_header(handle, size: int) -> dict:
    """The checked header of a reference file of ``size`` bytes; its arrays' entries get
    ``nbytes`` and lie within the file."""
    head = handle.read(len(MAGIC) + 4)
    if len(head) < len(MAGIC) + 4 or head[: len(MAGIC)] != MAGIC:
        raise _bad(f"not an edgeshrink reference: it starts with {head[:8]!r}")
    (length,) = struct.unpack("<I", head[len(MAGIC) :])
    data_size = size - len(head) - length
    if length > MAX_HEADER_BYTES or data_size < 0:
        raise _bad(f"the header claims {length} bytes in a file of {size}")
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
    except ValueError as exc:
        raise _bad(f"the header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("schema") != REFERENCE_SCHEMA:
        schema = header.get("schema") if isinstance(header, dict) else None
        raise ReferenceError(
            "reference_invalid",
            f"reference schema {schema!r}, this agent reads {REFERENCE_SCHEMA!r}",
            "use the same edgeshrink on the host and for the agent",
        )
    if header.get("kind") not in KINDS:
        raise _bad(f"reference kind {header.get('kind')!r} is not one of {', '.join(KINDS)}")
    arrays = header.get("arrays")
    if not isinstance(arrays, dict) or len(arrays) > MAX_ARRAYS:
        raise _bad("the header's list of arrays is missing or too long")
    for name, entry in arrays.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
            raise _bad(f"array {name!r}: unknown dtype")
        shape, offset = entry.get("shape"), entry.get("offset")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or not isinstance(offset, int)
            or offset < 0
        ):
            raise _bad(f"array {name!r}: bad shape or offset")
        count = 1
        for dim in shape:
            count *= dim
        nbytes = count * DTYPES[entry["dtype"]]
        if offset + nbytes > data_size:
            raise _bad(
                f"array {name!r} ({nbytes} bytes at {offset}) runs past the file's "
                f"{data_size} bytes of data: truncated?"
            )
        entry["nbytes"] = nbytes
    header["data_offset"] = len(head) + length
    return header


def read_reference(np, path: str):
    """(header, {name: array}) of the reference at ``path``, checked before it is read."""
    try:
        with open(path, "rb") as handle:
            return _read_arrays(np, handle, os.fstat(handle.fileno()).st_size)
    except OSError as exc:
        raise ReferenceError(
            "reference_missing",
            f"cannot read the reference {path}: {exc}",
            "push it with the model (edgeshrink eval with a target does)",
        ) from exc


def _read_arrays(np, handle, size: int):
    header = read_header(handle, size)
    arrays = {}
    for name, entry in header["arrays"].items():
        handle.seek(header["data_offset"] + entry["offset"])
        raw = handle.read(entry["nbytes"])
        if len(raw) != entry["nbytes"]:
            raise _bad(f"array {name!r} is cut short")
        arrays[name] = np.frombuffer(raw, dtype=entry["dtype"]).reshape(entry["shape"])
    return header, arrays


def vocab_fingerprint(texts) -> str:
    """The sha256 of a vocabulary: every token's text (bytes), in id order, length-prefixed."""
    digest = hashlib.sha256()
    count = 0
    for text in texts:
        digest.update(struct.pack("<I", len(text)))
        digest.update(text)
        count += 1
    digest.update(struct.pack("<I", count))
    return digest.hexdigest()


def llama_vocab_texts(lc, model, n_vocab: int):
    """Every token's text as llama.cpp holds it (bytes), through either binding API."""
    get = getattr(lc, "llama_vocab_get_text", None)
    if get is not None and hasattr(lc, "llama_model_get_vocab"):
        vocab = lc.llama_model_get_vocab(model)
        return [get(vocab, i) or b"" for i in range(n_vocab)]
    get = lc.llama_token_get_text
    return [get(model, i) or b"" for i in range(n_vocab)]


# --------------------------------------------------------------------------- llama-perplexity's formulas


def mean_and_uncertainty(total: float, total2: float, count: int):
    """llama.cpp's mean_and_uncertainty."""
    if count < 1:
        return 0.0, 0.0
    mean = float(total) / count
    var = float(total2) / count - mean * mean
    return mean, math.sqrt(var / (count - 1)) if var > 0 and count > 10 else 0.0


def percentile(sorted_values, fraction: float) -> float:
    """llama.cpp's percentile (linear interpolation on sorted values)."""
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = fraction * (len(sorted_values) - 1)
    ip = int(p)
    p -= ip
    upper = sorted_values[min(ip + 1, len(sorted_values) - 1)]
    return float((1 - p) * sorted_values[ip] + p * upper)


def _estimate(value: float, uncertainty: float) -> dict:
    return {"value": float(value), "uncertainty": float(uncertainty)}


def llm_summary(np, nll, nll_base, kld, same, dp) -> dict:
    """llama-perplexity --kl-divergence's figures from per-position arrays: the candidate's
    and the base's negative log-likelihoods of the next token, the KL divergence, whether
    the top tokens agree and the change of the next token's probability."""
    count = int(nll.size)
    log_ppl, log_ppl_unc = mean_and_uncertainty(nll.sum(), (nll**2).sum(), count)
    log_ppl_base, log_ppl_base_unc = mean_and_uncertainty(
        nll_base.sum(), (nll_base**2).sum(), count
    )
    cov = 0.0
    if count >= 10:
        cov = ((nll * nll_base).sum() / count - nll.mean() * nll_base.mean()) / (count - 1)
    ppl, ppl_base = math.exp(log_ppl), math.exp(log_ppl_base)
    ln_ratio = log_ppl - log_ppl_base
    ln_ratio_unc = math.sqrt(max(log_ppl_unc**2 + log_ppl_base_unc**2 - 2 * cov, 0.0))
    ppl_unc, ppl_base_unc = ppl * log_ppl_unc, ppl_base * log_ppl_base_unc
    diff_unc = math.sqrt(max(ppl_unc**2 + ppl_base_unc**2 - 2 * ppl * ppl_base * cov, 0.0))
    kld_mean, kld_unc = mean_and_uncertainty(kld.sum(), (kld**2).sum(), count)
    kld_sorted = np.sort(kld)
    mse, mse_unc = mean_and_uncertainty((dp**2).sum(), (dp**4).sum(), count)
    rms = math.sqrt(mse)
    same_top = float(same.mean())
    return {
        "n_scored": count,
        "ppl_base": _estimate(ppl_base, ppl_base_unc),
        "ppl": _estimate(ppl, ppl_unc),
        "ppl_ratio": _estimate(math.exp(ln_ratio), math.exp(ln_ratio) * ln_ratio_unc),
        "ppl_diff": _estimate(ppl - ppl_base, diff_unc),
        "ln_ppl_ratio": _estimate(ln_ratio, ln_ratio_unc),
        "kld_mean": _estimate(kld_mean, kld_unc),
        "kld_median": percentile(kld_sorted, 0.5),
        "kld_p99": percentile(kld_sorted, 0.99),
        "kld_max": float(kld_sorted[-1]),
        "same_top": _estimate(same_top, math.sqrt(same_top * (1 - same_top) / max(count - 1, 1))),
        "rms_dp": _estimate(rms, 0.5 / rms * mse_unc if rms > 0 else 0.0),
    }


def log_softmax(np, logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# --------------------------------------------------------------------------- a language model's reference


def scored_targets(np, tokens, n_ctx: int, n_chunks: int):
    """The next token of every scored position: positions n_ctx/2 .. n_ctx-2 of each chunk."""
    first = n_ctx // 2
    rows = [tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx] for i in range(n_chunks)]
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


def llm_reference_rows(np, log_probs, targets, rng, top_k: int, samples: int) -> dict:
    """The reference's arrays for a block of scored positions, from the base's log-probs
    (rows: positions, columns: the vocabulary) and the next tokens.

    Top-k ties are broken by token id, as argmax breaks them, so the first entry is the
    base's top token. The samples are stratified over the rest's probability."""
    lp = np.asarray(log_probs, dtype=np.float64)
    n_rows, n_vocab = lp.shape
    k = min(top_k, n_vocab)
    kth = np.partition(lp, n_vocab - k, axis=1)[:, n_vocab - k]
    top_ids = np.empty((n_rows, k), dtype=np.int64)
    for row in range(n_rows):
        found = np.flatnonzero(lp[row] >= kth[row])
        order = np.lexsort((found, -lp[row, found]))[:k]
        top_ids[row] = found[order]
    top_lp = np.take_along_axis(lp, top_ids, axis=1)
    probs = np.exp(lp)
    np.put_along_axis(probs, top_ids, 0.0, axis=1)
    cdf = np.cumsum(probs, axis=1)
    tail_mass = cdf[:, -1].copy()
    sample_ids = np.zeros((n_rows, samples), dtype=np.int64)
    sample_lp = np.zeros((n_rows, samples), dtype=np.float64)
    offsets = 1.0 - rng.random(n_rows)  # in (0, 1]: the first stratum never lands on 0
    strata = np.arange(samples, dtype=np.float64)
    for row in range(n_rows):
        if tail_mass[row] <= 0 or samples == 0:
            sample_ids[row] = top_ids[row, -1]
            sample_lp[row] = top_lp[row, -1]
            continue
        points = (strata + offsets[row]) / samples * tail_mass[row]
        picked = np.minimum(np.searchsorted(cdf[row], points, side="left"), n_vocab - 1)
        sample_ids[row] = picked
        sample_lp[row] = lp[row, picked]
    id_type = np.uint16 if n_vocab <= 1 << 16 else np.uint32
    return {
        "top_ids": top_ids.astype(id_type),
        "top_lp": top_lp.astype(np.float16),
        "tail_mass": tail_mass.astype(np.float32),
        "sample_ids": sample_ids.astype(id_type),
        "sample_lp": sample_lp.astype(np.float16),
        "target_lp": lp[np.arange(n_rows), targets].astype(np.float16),
    }


class LlmScores:
    """A candidate's figures against a language model's reference, fed the candidate's
    logits chunk by chunk (rows: the scored positions of the chunk, in order)."""

    def __init__(self, np, header: dict, arrays: dict) -> None:
        self.np = np
        self.header = header
        self.n_scored = int(header["n_scored"])
        self.targets = scored_targets(
            np, arrays["tokens"], int(header["n_ctx"]), int(header["n_chunks"])
        ).astype(np.int64)
        if self.targets.size != self.n_scored:
            raise _bad(f"{self.targets.size} next tokens for {self.n_scored} scored positions")
        self.arrays = arrays
        for name in ("top_ids", "top_lp", "tail_mass", "sample_ids", "sample_lp", "target_lp"):
            if name not in arrays or arrays[name].shape[:1] != (self.n_scored,):
                raise _bad(f"array {name!r} is missing or not one row per scored position")
        n_vocab = int(header["tokenizer"]["n_vocab"])
        for name in ("tokens", "top_ids", "sample_ids"):
            if arrays[name].size and int(arrays[name].max()) >= n_vocab:
                raise _bad(f"array {name!r} holds token ids beyond the {n_vocab}-token vocabulary")
        self.done = 0
        self.parts = {
            k: [] for k in ("nll", "nll_base", "kld", "kld_topk_rest", "var", "same", "dp")
        }

    def add(self, logits) -> None:
        """The next scored positions' logits (float rows over the vocabulary)."""
        for start in range(0, logits.shape[0], ROWS_PER_BLOCK):
            block = logits[start : start + ROWS_PER_BLOCK]
            self._add_block(block, self.done, self.done + block.shape[0])
            self.done += block.shape[0]

    def _add_block(self, block, lo: int, hi: int) -> None:
        np, a = self.np, self.arrays
        if hi > self.n_scored:
            raise _bad(f"more scored positions than the reference's {self.n_scored}")
        raw = np.asarray(block, dtype=np.float64)
        lq = log_softmax(np, raw)
        rows = np.arange(hi - lo)
        nll = -lq[rows, self.targets[lo:hi]]
        nll_base = -a["target_lp"][lo:hi].astype(np.float64)
        top_ids = a["top_ids"][lo:hi].astype(np.int64)
        top_lp = a["top_lp"][lo:hi].astype(np.float64)
        lq_top = np.take_along_axis(lq, top_ids, axis=1)
        head = np.where(top_lp > LOG_PROB_FLOOR, np.exp(top_lp) * (top_lp - lq_top), 0.0).sum(1)
        rest_q = np.exp(lq)
        np.put_along_axis(rest_q, top_ids, 0.0, axis=1)
        rq = np.maximum(rest_q.sum(axis=1), 1e-300)
        r = a["tail_mass"][lo:hi].astype(np.float64)
        has_rest = r > 0
        safe_r = np.where(has_rest, r, 1.0)
        merged = np.where(has_rest, r * (np.log(safe_r) - np.log(rq)), 0.0)
        sample_ids = a["sample_ids"][lo:hi].astype(np.int64)
        m = max(sample_ids.shape[1], 1)
        log_rho = (np.take_along_axis(lq, sample_ids, axis=1) - np.log(rq)[:, None]) - (
            a["sample_lp"][lo:hi].astype(np.float64) - np.log(safe_r)[:, None]
        )
        k3 = np.expm1(log_rho) - log_rho
        tail_kl = k3.mean(axis=1) if sample_ids.shape[1] else np.zeros(hi - lo)
        var = k3.var(axis=1, ddof=1) / m if sample_ids.shape[1] > 1 else np.zeros(hi - lo)
        self.parts["nll"].append(nll)
        self.parts["nll_base"].append(nll_base)
        self.parts["kld_topk_rest"].append(head + merged)
        self.parts["kld"].append(head + merged + np.where(has_rest, r * tail_kl, 0.0))
        self.parts["var"].append(np.where(has_rest, r * r * var, 0.0))
        self.parts["same"].append(raw.argmax(axis=1) == top_ids[:, 0])
        self.parts["dp"].append(np.exp(-nll) - np.exp(-nll_base))

    def summary(self) -> dict:
        np = self.np
        if self.done != self.n_scored:
            raise _bad(f"{self.done} positions scored of the reference's {self.n_scored}")
        joined = {k: np.concatenate(v) for k, v in self.parts.items()}
        doc = llm_summary(np, joined["nll"], joined["nll_base"], joined["kld"], joined["same"],
                          joined["dp"])  # fmt: skip
        h = self.header
        doc.update({
            "kind": "llm-text",
            "n_ctx": int(h["n_ctx"]),
            "n_chunks": int(h["n_chunks"]),
            "text_sha256": h.get("text_sha256"),
            "top_k": int(h["top_k"]),
            "tail_samples": int(h["tail_samples"]),
            "kld_topk_rest": float(joined["kld_topk_rest"].mean()),
            "kld_sampling_error": math.sqrt(float(joined["var"].sum())) / max(self.n_scored, 1),
        })  # fmt: skip
        return doc


# --------------------------------------------------------------------------- outputs of other models


def is_classifier(array) -> bool:
    return array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f"


def cosines(np, a, b):
    """Cosine similarity of each row (sample) of a and b, flattened; 1 where both are zero."""
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    dot = np.sum(a * b, axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_zero, 1.0, cos)


def output_figures(np, name: str, base, candidate) -> dict:
    """How closely one output of the candidate follows the base's over all samples (the
    fields of the host's OutputAgreement); shapes must already agree."""
    base64 = base.astype(np.float64)
    diff = np.abs(base64 - candidate.astype(np.float64))
    cos = cosines(np, base, candidate) if base.ndim >= 1 and base.size else np.ones(1)
    top1 = None
    if is_classifier(base):
        top1 = float(np.mean(base.argmax(axis=1) == candidate.argmax(axis=1)))
    return {
        "name": name,
        "shape": [int(d) for d in base.shape],
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "max_abs_reference": float(np.abs(base64).max()) if base.size else 0.0,
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "top1_agreement": top1,
    }


def accuracy_output(outputs: dict, n_rows: int, top_label: int):
    """The output accuracy is read from: the first classifier with a column per label."""
    for name, array in outputs.items():
        if is_classifier(array) and array.shape[0] == n_rows and array.shape[1] > top_label:
            return name
    return None


def accuracy_metric(np, labels, base, candidate, output: str) -> dict:
    base_acc = float(np.mean(base.argmax(axis=1) == labels))
    cand_acc = float(np.mean(candidate.argmax(axis=1) == labels))
    return metric("accuracy", cand_acc, True, output, reference=base_acc)


def metric(name: str, value: float, higher_is_better: bool, output=None, reference=None) -> dict:
    return {"name": name, "value": value, "higher_is_better": higher_is_better,
            "output": output, "reference": reference}  # fmt: skip


def agreement_metrics(figures: list, accuracy=None) -> list:
    """The metrics of a report of output agreement, in the host's order."""
    metrics = []
    for f in figures:
        metrics += [
            metric("cosine_mean", f["cosine_mean"], True, f["name"]),
            metric("cosine_min", f["cosine_min"], True, f["name"]),
            metric("max_abs_error", f["max_abs_error"], False, f["name"]),
            metric("mean_abs_error", f["mean_abs_error"], False, f["name"]),
        ]
        if f["top1_agreement"] is not None:
            metrics.append(metric("top1_agreement", f["top1_agreement"], True, f["name"]))
    if accuracy is not None:
        metrics.append(accuracy)
    return metrics


def outputs_reference_feeds(header: dict, arrays: dict) -> list:
    """The feeds of an outputs reference, in order: [{input name: array}, ...]."""
    inputs = header.get("inputs")
    n_feeds = header.get("n_feeds")
    if not isinstance(inputs, list) or not isinstance(n_feeds, int) or n_feeds < 0:
        raise _bad("the header does not list the inputs and feeds")
    feeds = []
    for i in range(n_feeds):
        feed = {}
        for name in inputs:
            key = f"feed/{i}/{name}"
            if key not in arrays:
                raise _bad(f"array {key!r} is missing")
            feed[name] = arrays[key]
        feeds.append(feed)
    return feeds


def outputs_quality(np, header: dict, arrays: dict, run_feed) -> dict:
    """The candidate's agreement with the base's outputs (and accuracy with labels), running
    ``run_feed(feed) -> {output name: array}`` on every feed of the reference."""
    names = header.get("outputs")
    if not isinstance(names, list) or not all(f"output/{n}" in arrays for n in names):
        raise _bad("the header's outputs do not match its arrays")
    parts = {n: [] for n in names}
    for feed in outputs_reference_feeds(header, arrays):
        produced = run_feed(feed)
        for name in names:
            if name not in produced:
                raise ReferenceError(
                    "reference_mismatch",
                    f"the model has no output {name!r}; the reference's base has"
                    f" {', '.join(names)}",
                    "compare a model with its own shrunk version",
                )
            array = np.asarray(produced[name])
            parts[name].append(array if array.ndim else array.reshape(1))
    figures = []
    candidate = {}
    for name in names:
        base = arrays[f"output/{name}"]
        candidate[name] = np.concatenate(parts[name], axis=0) if parts[name] else base[:0]
        if candidate[name].shape != base.shape:
            raise ReferenceError(
                "reference_mismatch",
                f"output {name!r} has shape {list(candidate[name].shape)} on the device, "
                f"{list(base.shape)} in the reference",
                "compare a model with its own shrunk version",
            )
        figures.append(output_figures(np, name, base, candidate[name]))
    accuracy = None
    chosen = header.get("accuracy_output")
    if chosen is not None and "labels" in arrays:
        labels = arrays["labels"].reshape(-1).astype(np.int64)
        accuracy = accuracy_metric(
            np, labels, arrays[f"output/{chosen}"], candidate[chosen], chosen
        )
    return {
        "kind": "output-agreement",
        "n_samples": int(header.get("n_samples") or 0),
        "inputs": header.get("inputs_name"),
        "labels": header.get("labels"),
        "metrics": agreement_metrics(figures, accuracy),
        "outputs": figures,
    }
