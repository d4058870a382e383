"""`edgeser listen`: live audio in, one line (or JSON line) per utterance out, through `edgeser.runtime.Listener`.

Sources: `--input FILE` (any file soundfile reads, played at real time, or as fast as possible with `--fast`),
`--input -` (raw PCM s16le on stdin at `--rate` Hz and `--channels`, fed as it arrives), or `--device N` (a
microphone through `sounddevice`, the `mic` extra; until Ctrl-C). At the end of the audio (or on Ctrl-C) the
utterance in progress is flushed. Exit 0 whether or not speech was found (text mode then prints `no speech
found`; `--json` closes with an `{"end": true, ...}` line); bad input or a missing device: one line, exit 1.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgeser.bundle import Precision
from edgeser.cli.params import Bounded, backend_option, precision_option, threads_option
from edgeser.runtime.options import Backend

# A microphone callback hands chunks to the main thread through a queue this long; past it (the model is
# slower than the audio) chunks are dropped and counted.
MIC_QUEUE_CHUNKS = 500


@click.command("listen")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--input", "source", help="An audio file, or - for raw s16le PCM on stdin (at --rate, --channels)."
)
@click.option(
    "--device",
    type=Bounded("device"),
    help="Listen to this input device (`python -m sounddevice` lists them); needs the mic extra.",
)
@click.option("--fast", is_flag=True, help="Feed a file as fast as possible instead of at real time.")
@click.option(
    "--rate",
    type=Bounded("sample_rate"),
    help="Sample rate of stdin PCM [16000], or of the device [its default].",
)
@click.option(
    "--channels",
    type=Bounded("channels"),
    default=1,
    show_default=True,
    help="Channels of stdin PCM or of the device (mixed to mono).",
)
@click.option(
    "--chunk-ms", type=Bounded("chunk_ms"), default=20, show_default=True, help="Audio per chunk fed."
)
@click.option(
    "--threshold", type=float, default=0.5, show_default=True, help="VAD speech probability threshold."
)
@click.option(
    "--min-silence-ms",
    type=float,
    default=400.0,
    show_default=True,
    help="Silence that ends an utterance (the least wait before its event).",
)
@click.option(
    "--max-speech-s",
    type=float,
    default=12.0,
    show_default=True,
    help="Longer speech is split into events of at most this length (<= 30).",
)
@precision_option()
@threads_option()
@backend_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per utterance, then an end line.")
def listen_command(
    bundle: Path,
    source: str | None,
    device: int | None,
    fast: bool,
    rate: int | None,
    channels: int,
    chunk_ms: int,
    threshold: float,
    min_silence_ms: float,
    max_speech_s: float,
    precision: Precision,
    threads: int | None,
    backend: Backend,
    as_json: bool,
) -> None:
    """Find utterances in live audio (a file, stdin PCM or a microphone) and print each one's emotion."""
    from edgeser.errors import OptionError
    from edgeser.runtime import Listener, Pipeline, VadOptions

    if (source is None) == (device is None):
        raise click.UsageError("give one source: --input FILE, --input - (s16le PCM on stdin) or --device N")
    if fast and source in (None, "-"):
        raise click.UsageError(
            "--fast applies to --input FILE only (stdin and devices arrive at their own pace)"
        )
    try:
        options = VadOptions(
            threshold=threshold,
            min_silence_ms=min_silence_ms,
            max_speech_s=max_speech_s,
            speech_pad_ms=min(100.0, min_silence_ms),
        )
    except OptionError as err:
        raise OptionError(f"--{err.name.replace('_', '-')}", err.problem) from None
    if source is not None and source != "-":
        from edgeser.audio import probe

        info = probe(Path(source))  # a bad file fails here, before the bundle is loaded
        rate, channels = info.sample_rate, info.channels
    pipe = Pipeline.load(bundle, precision, threads=threads, backend=backend)
    if device is not None:
        chunks, rate, stats = _microphone(device, rate, channels, chunk_ms)
    elif source == "-":
        rate = rate or 16_000
        chunks, stats = _stdin(rate, channels, chunk_ms), {}
    else:
        chunks, stats = _file(Path(str(source)), chunk_ms, fast), {}
    assert rate is not None  # for mypy: every source fixed it
    listener = Listener(pipe, rate, channels=channels, options=options)
    count = 0
    try:
        for event in listener.events(chunks):
            count += 1
            _emit(event, as_json)
    except KeyboardInterrupt:  # Ctrl-C ends a live stream: the utterance in progress still comes out
        for event in listener.flush():
            count += 1
            _emit(event, as_json)
    seconds = listener.seconds
    if as_json:
        click.echo(
            json.dumps(
                {
                    "end": True,
                    "utterances": count,
                    "duration_s": round(seconds, 3),
                    "speech_ratio": round(listener.speech_ratio, 4),
                    **stats,
                }
            )
        )
    elif count == 0:
        click.echo(f"no speech found ({seconds:.2f} s)")
    if stats.get("dropped_chunks"):
        click.secho(
            f"warning: {stats['dropped_chunks']} chunk(s) dropped: the model fell behind the device",
            fg="yellow",
            err=True,
        )


def _emit(event: Any, as_json: bool) -> None:
    p = event.prediction
    if as_json:
        click.echo(json.dumps({"label": p.label, **asdict(event)}, ensure_ascii=False))
    else:
        cut = "\t(continues)" if event.cut else ""
        click.echo(
            f"{event.start_s:8.2f}-{event.end_s:8.2f}\t{p.label}\t{p.confidence:.3f}\t"
            f"{1e3 * event.latency_s:.0f} ms\t{p.transcript or ''}{cut}"
        )


def _file(path: Path, chunk_ms: int, fast: bool) -> Iterator[np.ndarray]:
    """A file's samples (float32, [frames, channels] or mono) in chunks, at real time unless `fast`."""
    import soundfile as sf

    from edgeser.errors import AudioError

    started = time.perf_counter()
    fed = 0
    try:
        with sf.SoundFile(str(path)) as handle:
            size = max(1, handle.samplerate * chunk_ms // 1000)
            for block in handle.blocks(blocksize=size, dtype="float32", always_2d=True):
                if not fast:
                    ahead = fed / handle.samplerate - (time.perf_counter() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                fed += block.shape[0]
                yield block[:, 0] if block.shape[1] == 1 else block
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(path, f"unreadable or corrupt audio ({' '.join(str(err).split())[:160]})") from err


def _stdin(rate: int, channels: int, chunk_ms: int) -> Iterator[np.ndarray]:
    """s16le PCM from stdin in chunks as it arrives; a trailing part-sample is reported and dropped."""
    stream = sys.stdin.buffer
    frame_bytes = 2 * channels
    size = max(1, rate * chunk_ms // 1000) * frame_bytes
    left = b""
    while True:
        data = stream.read(size)
        if not data:
            break
        data = left + data
        whole = len(data) // frame_bytes * frame_bytes
        left = data[whole:]
        samples = np.frombuffer(data[:whole], dtype="<i2")
        yield samples if channels == 1 else samples.reshape(-1, channels)
    if left:
        click.secho(
            f"warning: stdin: {len(left)} trailing byte(s) do not make a whole s16le frame of {channels} "
            "channel(s); dropped",
            fg="yellow",
            err=True,
        )


def _microphone(
    device: int, rate: int | None, channels: int, chunk_ms: int
) -> tuple[Iterator[np.ndarray], int, dict[str, int]]:
    """Chunks from an input device through sounddevice (the `mic` extra), until Ctrl-C."""
    from edgeser.errors import AudioError, MissingDependencyError

    try:
        import sounddevice as sd
    except ModuleNotFoundError as err:
        raise MissingDependencyError("sounddevice", "mic", "edgeser listen --device") from err
    except OSError as err:  # the module is there, the PortAudio library is not
        raise AudioError(
            f"--device {device}",
            f"sounddevice cannot load PortAudio ({err}); install the "
            "PortAudio library (e.g. apt-get install libportaudio2)",
        ) from err
    try:
        info = sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as err:
        raise AudioError(
            f"--device {device}",
            f"no such input device ({' '.join(str(err).split())[:160]}); `python -m sounddevice` lists them",
        ) from err
    rate = rate or int(info["default_samplerate"])
    chunks: queue.Queue[np.ndarray] = queue.Queue(maxsize=MIC_QUEUE_CHUNKS)
    stats = {"dropped_chunks": 0}

    def callback(data: np.ndarray, _frames: int, _time: Any, _status: Any) -> None:
        try:
            chunks.put_nowait(data[:, 0].copy() if channels == 1 else data.copy())
        except queue.Full:
            stats["dropped_chunks"] += 1

    try:
        stream = sd.InputStream(
            device=device,
            samplerate=rate,
            channels=channels,
            dtype="float32",
            blocksize=max(1, rate * chunk_ms // 1000),
            callback=callback,
        )
    except (ValueError, sd.PortAudioError) as err:
        raise AudioError(
            f"--device {device}",
            f"cannot open it at {rate} Hz, {channels} channel(s) ({' '.join(str(err).split())[:160]})",
        ) from err

    def read() -> Iterator[np.ndarray]:
        with stream:
            while True:
                try:
                    yield chunks.get(timeout=0.5)
                except queue.Empty:
                    if not stream.active:  # the device stopped (unplugged, or its callback ended)
                        return

    return read(), rate, stats


def register(main: click.Group) -> None:
    main.add_command(listen_command)
