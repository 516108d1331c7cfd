"""Export zoo models, solvers and your own models to TorchScript and ONNX, and serve them.

The exported graph is the noise-free MAP path of eval mode, with the solver inside it as tensor
operations (an ONNX ``Loop`` for the looping solvers). The batch dimension is dynamic; problem
sizes are dynamic where the exporter keeps them so (sequence length, grid size, vertex count
of the solvers on their own) and fixed otherwise, as recorded in the file's metadata.

Example::

    import aimle_zoo
    from aimle_zoo.export import OnnxRunner, to_onnx, to_torchscript, verify

    model = aimle_zoo.from_pretrained("l2x-mnist")            # eval mode
    to_onnx(model, "out/l2x-mnist.onnx")
    to_torchscript(model, "out/l2x-mnist.pt")
    print(verify(model, "out/l2x-mnist.onnx"))               # fresh inputs, several batch sizes
    outputs = OnnxRunner("out/l2x-mnist.onnx").run({"images": images})  # numpy in, numpy out

``runner.py`` needs only numpy and onnxruntime: a deployment without torch loads that file
directly (see :mod:`aimle_zoo.export.runner`).
"""

from ._paths import (
    ExportError as ExportError,
    InferencePath as InferencePath,
    NonExportableSolverError as NonExportableSolverError,
    SolverInfo as SolverInfo,
    TensorSpec as TensorSpec,
    inference_path as inference_path,
)
from .choice import (
    DEFAULT_OPSET as DEFAULT_OPSET,
    ExporterChoice as ExporterChoice,
    UnsupportedOpsetError as UnsupportedOpsetError,
    choose_exporter as choose_exporter,
)
from .metadata import ExportResult as ExportResult, read_metadata as read_metadata
from .onnx import SplitPipeline as SplitPipeline, to_onnx as to_onnx
from .predict import (
    TorchScriptModel as TorchScriptModel,
    check_output_path as check_output_path,
    load_exported as load_exported,
    prediction_output_path as prediction_output_path,
    read_inputs as read_inputs,
    write_outputs as write_outputs,
)
from .runner import (
    ModelFileError as ModelFileError,
    OnnxRunner as OnnxRunner,
    RunnerInputError as RunnerInputError,
    SolverRefusedError as SolverRefusedError,
    select_providers as select_providers,
)
from .torchscript import to_torchscript as to_torchscript
from .verify import (
    VerificationError as VerificationError,
    VerifyReport as VerifyReport,
    verify as verify,
)
