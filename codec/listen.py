"""`codec listen RUN_DIR...`: one self-contained HTML page to hear and see runs side by side.

    codec listen runs/phase_1 runs/phase_b                   # -> runs/listen.html
    codec listen runs/phase_1 runs/phase_b --step 249 --out /tmp/a_vs_b.html

For each run (a version directory, or runs/<name> for its newest completed version) it takes the
audio examples the `AudioExamples` callback saved at a validation (`examples/step_NNNNNN/`; default:
each run's latest) and lays them out one row per item: the input once when every run validated on
the same audio, then per run a player of the decoded item and its spectrogram (input | decoded).
Audio and images are embedded as data URIs, so the file stands alone: mail it, open it offline.
`codec compare` writes the same page as listen.html beside its table when the runs have examples.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from pathlib import Path

from codec.runs import Run, load_run

MIME = {".wav": "audio/wav", ".png": "image/png"}
SHOWN = [("SNR", "val/audio/snr_db", "{:.2f} dB"), ("RMS ratio", "val/audio/rms_ratio", "{:.3f}"),
         ("mel L1", "val/audio/mel_l1", "{:.3f}")]


def example_step(run: Run, step: int | None) -> int | None:
    """The example step shown for a run: `step` itself if it saved one there, else the latest at or
    before it (the latest of all when `step` is None); None when the run saved no examples."""
    steps = [s for s in run.examples() if step is None or s <= step]
    return max(steps) if steps else None


def items(folder: Path) -> list[str]:
    """Item prefixes ("00", "01", ...) of an example folder."""
    return sorted(p.name.split("_")[0] for p in folder.glob("*_decoded.wav"))


def data_uri(path: Path) -> str:
    return f"data:{MIME[path.suffix]};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def page(runs: list[Run], step: int | None = None) -> str:
    """The HTML text; raises FileNotFoundError when no run saved audio examples."""
    shown = [(run, s) for run in runs if (s := example_step(run, step)) is not None]
    missing = [run.label for run in runs if example_step(run, step) is None]
    if not shown:
        raise FileNotFoundError(f"no audio examples (examples/step_*/) in {', '.join(r.label for r in runs)}; "
                                "runs save them at each validation (diagnostics.examples)")
    folders = [(run, s, run.examples()[s]) for run, s in shown]
    n_items = max(len(items(folder)) for _, _, folder in folders)
    shared_input = _same_inputs([folder for _, _, folder in folders], n_items)
    head = ["<th>item</th>"] + (["<th>input</th>"] if shared_input else [])
    head += [f"<th>{html.escape(run.label)}<br><small>{html.escape(_caption(run, s))}</small></th>"
             for run, s, _ in folders]
    rows = []
    for i in range(n_items):
        prefix = f"{i:02d}"
        cells = [f"<td>{i}</td>"]
        if shared_input:
            cells.append(f"<td>{_player(folders[0][2] / f'{prefix}_input.wav', 'input')}</td>")
        for _, _, folder in folders:
            parts = [] if shared_input else [_player(folder / f"{prefix}_input.wav", "input")]
            parts += [_player(folder / f"{prefix}_decoded.wav", "decoded"), _image(folder / f"{prefix}_spectrogram.png")]
            cells.append("<td>" + "".join(parts) + "</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    notes = [f"<p class=note>{html.escape(label)}: no audio examples saved</p>" for label in missing]
    notes += [f"<p class=note>{html.escape(note)}</p>" for run in runs for note in run.skipped]
    return TEMPLATE.format(title=html.escape("Listening: " + " vs ".join(r.label for r in runs)),
                           notes="\n".join(notes), head="".join(head), rows="\n".join(rows))


def _caption(run: Run, step: int) -> str:
    values = [(name, run.value_at(key, step), fmt) for name, key, fmt in SHOWN]
    shown = ", ".join(f"{name} {fmt.format(found[1])}" for name, found, fmt in values if found and found[0] == step)
    return f"step {step}" + (f": {shown}" if shown else "")


def _same_inputs(folders: list[Path], n_items: int) -> bool:
    """Whether every run's input item i is the same audio (same data and crops)."""
    for i in range(n_items):
        contents = {(f / f"{i:02d}_input.wav").read_bytes() if (f / f"{i:02d}_input.wav").is_file() else None
                    for f in folders}
        if len(contents) != 1 or None in contents:
            return False
    return True


def _player(path: Path, name: str) -> str:
    if not path.is_file():
        return f"<div class=missing>{name}: missing</div>"
    return f'<div><small>{name}</small><br><audio controls preload="metadata" src="{data_uri(path)}"></audio></div>'


def _image(path: Path) -> str:
    if not path.is_file():
        return "<div class=missing>spectrogram: missing</div>"
    return f'<img alt="spectrogram input | decoded" src="{data_uri(path)}">'


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 6px; vertical-align: top; }}
img {{ display: block; max-width: 480px; margin-top: 4px; }}
.note, .missing {{ color: #a00; }}
</style></head><body>
<h1>{title}</h1>
<p>Each row is one validation item; each run column plays the decoded item and shows the spectrogram of
input | decoded on one colour scale. Players and images are embedded in this file.</p>
{notes}
<table><thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody></table>
</body></html>
"""


def write_listening_report(runs: list[Run], out: Path, step: int | None = None) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(runs, step))
    return out


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "listen":
        args = args[1:]
    p = argparse.ArgumentParser(prog="codec listen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (version_N) or runs/<name> (its newest completed version)")
    p.add_argument("--step", type=int, help="the validation step to hear (default: each run's latest examples)")
    p.add_argument("--out", default="runs/listen.html", help="the HTML file (default: runs/listen.html)")
    opts = p.parse_args(args)
    try:
        runs = [load_run(r) for r in opts.runs]
        path = write_listening_report(runs, Path(opts.out), opts.step)
    except FileNotFoundError as e:
        print(f"codec listen: {e}", file=sys.stderr)
        return 2
    for note in (n for run in runs for n in run.skipped):
        print(f"codec listen: {note}", file=sys.stderr)
    print(f"written: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
