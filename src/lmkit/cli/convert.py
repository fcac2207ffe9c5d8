"""Commands that write a model in another form: import-hf, export-hf, quantize, prune, export-onnx, export-gguf."""
# Handlers import the library when they run, so that `lmkit --help` and flag errors never load torch.
from __future__ import annotations

from . import flags

# export-hf's formats, as in models/gpt_hf.py FORMATS (+ bert); tests/test_hf_families.py checks they agree
EXPORT_FORMATS = ["auto", "gpt2", "llama", "qwen2", "qwen3", "mistral", "bert"]


def register(g: flags.Group) -> None:
    p = g.command("import-hf", run_import_hf,
                  "convert a Hugging Face GPT-2 / Llama-style checkpoint into a run directory",
                  "Read config.json, weights (safetensors, or pytorch_model.bin as weights only) and tokenizer "
                  "files from HF_DIR (or hf:<hub id>) and write an lmkit run directory.")
    p.add_argument("hf_dir", help="Hugging Face model folder, or hf:<hub id> (downloads)")
    flags.out(p, "run directory to write", legacy="out_dir")
    flags.overwrite(p, "replace a run already in out_dir")

    p = g.command("export-hf", run_export_hf, "write a run as a Hugging Face model folder (GPT-2 or Llama-style)",
                  "Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json that "
                  "transformers' AutoModelForCausalLM / AutoTokenizer load.")
    p.add_argument("run_dir", help=flags.TRAINED_RUN)
    flags.out(p, "folder to write", legacy="out_dir")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="auto",
                   help="auto picks the format that holds the model's options (default)")
    flags.overwrite(p, "write into a non-empty folder")

    p = g.command("quantize", run_quantize, "int8 / int4 weights for CPU inference (about 4x / 6x smaller)",
                  "Store every Linear weight of the Transformer blocks and the output head (a head tied to "
                  "the embedding gets a quantized copy; the embedding stays float) as int8 or int4 with one "
                  "scale per output row or per group of inputs; "
                  "activations stay float. The output loads like any run (generate, chat, serve, evaluate, "
                  "embed). Works on a GPT or BERT run and on a Hugging Face GPT or BERT folder.")
    p.add_argument("run_dir")
    p.add_argument("--bits", default="8", metavar="8|4",  # checked by the library, in one line
                   help="8 (default: one scale per output row) or 4 (one scale per group, default 32)")
    p.add_argument("--group-size", default=None, metavar="32|64|128",
                   help="inputs per scale: 32, 64 or 128 (default: the whole row for 8 bits, 32 for 4 bits)")
    p.add_argument("--float-head", action="store_true",
                   help="keep the output head in float (it is read for every token: on a large vocabulary it "
                        "is much of the decoding time)")
    p.add_argument("--out", required=True, help="output run directory")
    flags.overwrite(p)

    p = g.command("prune", run_prune,
                  "magnitude pruning (unstructured, or --structured MLP units), optional recovery",
                  "Zero the smallest-magnitude weights of each block matrix (or drop whole MLP hidden units "
                  "with --structured), then optionally fine-tune briefly to recover.")
    p.add_argument("run_dir")
    flags.number(p, "--sparsity", type=float, lo=0, hi=1, lo_open=True, hi_open=True, default=0.5,
                 help="fraction to remove (default 0.5)")
    p.add_argument("--structured", action="store_true", help="drop whole MLP hidden units (smaller, faster matrices)")
    flags.number(p, "--finetune-iters", lo=0, default=0,
                 help="recovery fine-tuning steps on the run's data (default 0)")
    p.add_argument("--out", required=True, help="output run directory")
    flags.overwrite(p)

    p = g.command("export-onnx", run_export_onnx,
                  "export to ONNX (dynamic batch and sequence) and verify with onnxruntime",
                  "Write input_ids -> logits (a GPT) or input_ids, attention_mask -> sentence embeddings (a BERT "
                  "encoder, e.g. the all-MiniLM-L6-v2 folder) as ONNX with dynamic batch and sequence axes and "
                  "check it against lmkit with onnxruntime.")
    p.add_argument("run_dir")
    flags.out(p, "output .onnx file", legacy="out_file")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")

    p = g.command("export-gguf", run_export_gguf, "write a Llama-style run as one GGUF file for llama.cpp / Ollama",
                  "Write the model (llama architecture metadata, byte-level BPE tokenizer, chat template, "
                  "tensors under llama.cpp's names) as a .gguf file, in float16 or quantized with the gguf "
                  "package (pip install 'lmkit[gguf]').")
    p.add_argument("run_dir", help="a Llama-style run (pos = rope, norm = rmsnorm, mlp = swiglu) or HF folder")
    flags.out(p, "output .gguf file", legacy="out_file")
    p.add_argument("--type", choices=["f16", "q8_0", "q4_0"], default="f16",
                   help="f16 (default), q8_0 or q4_0 (blocks of 32 weights with one scale)")
    flags.overwrite(p, "replace an existing file")


def run_import_hf(a) -> None:
    from ..runs.hf import import_hf
    from ..runs.detect import detect
    out = import_hf(a.hf_dir, a.out, overwrite=a.overwrite)
    found = detect(out)
    try_it = {"classifier": f"lmkit predict {out} \"some text\"",
              "bert": f"lmkit fill-mask {out} \"Paris is the [MASK] of France.\" (a BERT: also --base of "
                      f"lmkit finetune classify, or the model of lmkit embed)"}
    print(f"imported {a.hf_dir} into {out}; try: "
          f"{try_it.get(found.kind, try_it.get(found.family, f'lmkit generate {out} --prompt Hello'))}")


def run_export_hf(a) -> None:
    from ..runs.hf_export import export_hf
    import json
    out = export_hf(a.run_dir, a.out, a.format, overwrite=a.overwrite)
    arch = (json.loads((out / "config.json").read_text(encoding="utf-8")).get("architectures") or ["?"])[0]
    auto = {"BertForMaskedLM": "AutoModelForMaskedLM", "BertForSequenceClassification":
            "AutoModelForSequenceClassification"}.get(arch, "AutoModelForCausalLM")
    print(f"exported {a.run_dir} to {out} as {arch} (load with transformers.{auto}.from_pretrained)")


def run_quantize(a) -> None:
    from ..compress import quantize
    def number(v):  # anything else is named by the library's check ("--bits 3: must be 4 or 8")
        return int(v) if v is not None and v.isdigit() else v
    r = quantize(a.run_dir, a.out, number(a.bits), number(a.group_size), overwrite=a.overwrite,
                 head=not a.float_head)
    print(f"{a.out}: {r['modules']} Linear layers in {r['method']}; model.safetensors "
          f"{r['bytes_before'] / 1e6:.2f} MB -> {r['bytes_after'] / 1e6:.2f} MB")


def run_prune(a) -> None:
    from ..compress import prune_run
    r = prune_run(a.run_dir, a.out, a.sparsity, a.structured, a.finetune_iters, overwrite=a.overwrite)
    for k, v in r.items():
        print(f"{k:<20} {v:.4f}" if isinstance(v, float) else f"{k:<20} {v}")
    print(f"wrote {a.out}")


def run_export_onnx(a) -> None:
    from ..api import load
    from ..compress import export_onnx
    from ..io import check_file_target
    from ..runs import FLOAT
    check_file_target(a.out)  # before the slow export
    r = export_onnx(load(a.run_dir, accept=FLOAT, purpose="export-onnx"), a.out, check=not a.no_check)
    msg = f"wrote {r['path']} ({r['bytes'] / 1e6:.2f} MB)"
    if "max_abs_diff" in r:
        msg += f"; onnxruntime vs lmkit: max |Δ {r['output']}| = {r['max_abs_diff']:.2e}"
    print(msg)


def run_export_gguf(a) -> None:
    from ..runs.gguf import export_gguf
    r = export_gguf(a.run_dir, a.out, a.type, overwrite=a.overwrite)
    print(f"wrote {r['path']} ({r['bytes'] / 1e6:.2f} MB, {r['type']}, {len(r['tensors'])} tensors, "
          f"vocab {r['vocab']}); try: llama-cli -m {r['path']} -p 'Hello'")
