"""Training steps of the zoo models eagerly vs under ``torch.compile`` (inductor).

Run: ``cd benchmarks && python bench_compile.py`` (``--quick`` for fewer repeats, ``--models``
to pick some of ``bench_models.py``'s cases by registry name). One CPU thread. The step is
``bench_models.py``'s (``zero_grad`` + ``training_loss`` + ``backward`` + an Adam step, the
recipe's batch size); the compiled variant runs ``torch.compile(model.training_loss)`` with
the default backend. ``compile s`` is the first compiled step (tracing, graph breaks and code
generation); the two step times are then timed in alternation.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch
from _timing import interleaved_times, print_table
from bench_models import CASES, training_step

from aimle_zoo.models import ZooModel, create_model


def compiled_model(model: ZooModel) -> ZooModel:
    """``model`` whose ``training_loss`` is compiled (the rest of the step stays eager)."""
    model.training_loss = torch.compile(model.training_loss)  # type: ignore[method-assign]
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    parser.add_argument("--models", nargs="+", help="registry names (default: every case)")
    args = parser.parse_args()
    rounds, repeats = (1, 2) if args.quick else (3, 3)
    torch.set_num_threads(1)
    torch._logging.set_logs(dynamo=logging.ERROR)  # not its notes on each graph break
    rows: list[list[object]] = []
    for case in CASES:
        if args.models and case.model not in args.models:
            continue
        batch = case.batch(torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        eager = create_model(case.model).train()
        compiled = compiled_model(create_model(case.model).train())
        compiled.load_state_dict(eager.state_dict())
        steps = [training_step(eager, batch), training_step(compiled, batch)]
        torch._dynamo.reset()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nor their warnings
            steps[1]()
        compile_seconds = time.perf_counter() - start
        eager_time, compiled_time = interleaved_times(steps, rounds, repeats)
        rows.append(
            [
                case.label,
                eager_time * 1e3,
                compiled_time * 1e3,
                f"{eager_time / compiled_time:.2f}x",
                f"{compile_seconds:.1f}",
            ]
        )
    print("\nTraining step, eager vs torch.compile (ms per step, 1 thread)")
    print_table(["model", "eager ms", "compiled ms", "speed-up", "compile s"], rows)


if __name__ == "__main__":
    main()
