"""drdemo web app: wires the served checkpoints into the Gradio page. Run: python app.py"""

import logging
import os

from drdemo.serving.runtime import share_cores
from drdemo.serving.slots import load_settings, serve
from drdemo.ui import build_demo


def mcp_enabled(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """The grade and compare tools are served over MCP unless DRDEMO_MCP is 0, false, no or off."""
    return environ.get("DRDEMO_MCP", "1").strip().lower() not in {"0", "false", "no", "off"}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    served = [serve(settings) for settings in load_settings()]  # loaded, checked and warmed up
    share_cores()  # after the imports that load numpy's, SciPy's and OpenCV's BLAS
    demo = build_demo(served)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        mcp_server=mcp_enabled(),
    )


if __name__ == "__main__":
    main()
