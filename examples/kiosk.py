"""A kiosk loop that reacts to the emotion of each thing a customer says.

    python examples/kiosk.py BUNDLE recording.flac [--fast]     # a file, played at real time (or fast)

It is what an app embeds: one `Pipeline`, one `Listener` per audio stream (here `Pipeline.stream` over a file's
chunks; a microphone's callback chunks work the same way), and a reaction per utterance event. Events come when
the customer pauses (about half a second of silence), each with its stream time, label, confidence and how long
after the utterance ended it arrived.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from edgeser.errors import EdgeserError
from edgeser.runtime import Pipeline, Utterance

REACTIONS = {
    "angry": "apologise and offer a member of staff",
    "disgust": "apologise and offer a member of staff",
    "fear": "slow down and reassure",
    "sad": "soften the voice and offer help",
    "happy": "keep the upbeat tone",
    "surprise": "explain what just happened",
    "neutral": "carry on",
    "boredom": "get to the point",
}
# Below this confidence the kiosk does not change its manner.
MIN_CONFIDENCE = 0.4


def chunks(path: Path, fast: bool, chunk_ms: int = 20) -> tuple[int, Iterator[np.ndarray]]:
    """The file's sample rate and its mono float32 chunks, paced at real time unless `fast` (as a mic would)."""
    handle = sf.SoundFile(str(path))

    def play() -> Iterator[np.ndarray]:
        started, fed = time.perf_counter(), 0
        with handle:
            for block in handle.blocks(
                blocksize=handle.samplerate * chunk_ms // 1000, dtype="float32", always_2d=True
            ):
                if not fast:
                    time.sleep(max(0.0, fed / handle.samplerate - (time.perf_counter() - started)))
                fed += block.shape[0]
                yield block.mean(axis=1)

    return handle.samplerate, play()


def react(event: Utterance) -> str:
    p = event.prediction
    manner = REACTIONS.get(p.label, "carry on") if p.confidence >= MIN_CONFIDENCE else "carry on (unsure)"
    return (
        f"kiosk: {event.start_s:6.2f}-{event.end_s:6.2f} s customer sounds {p.label} ({p.confidence:.2f}), "
        f"heard {p.transcript or '-'!r} -> {manner} [{1e3 * event.latency_s:.0f} ms after they stopped]"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("audio", type=Path)
    parser.add_argument("--fast", action="store_true", help="Feed the file as fast as possible.")
    args = parser.parse_args()
    try:
        pipe = Pipeline.load(args.bundle, threads=1)
        rate, audio = chunks(args.audio, args.fast)
        moods: collections.Counter[str] = collections.Counter()
        for event in pipe.stream(audio, sample_rate=rate):
            moods[event.label] += 1
            print(react(event), flush=True)
    except (EdgeserError, sf.LibsndfileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    mostly = f", mostly {moods.most_common(1)[0][0]}" if moods else " (nobody spoke)"
    print(f"session over: {sum(moods.values())} utterance(s){mostly}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
