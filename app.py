"""drdemo web app: wires the served checkpoints into the Gradio page. Run: python app.py"""

import logging
import os

from drdemo.serving.slots import load_settings, serve
from drdemo.ui import build_demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    served = [serve(settings) for settings in load_settings()]  # loaded, checked and warmed up
    demo = build_demo(served)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )


if __name__ == "__main__":
    main()
