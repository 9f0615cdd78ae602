"""dphyper's web app: `python app.py` (host/port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)."""

from dphyper.app import launch

if __name__ == "__main__":
    launch()
