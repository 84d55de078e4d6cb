"""The app's MCP tools, through a real MCP client (the `mcp` package gradio[mcp] pins) against app.py on loopback:
the tools are listed, a real fundus photo is graded with a structured answer and its heat map, and a picture
that is no fundus photo is refused, saying why. Photos travel as base64 data URLs: Gradio refuses loopback URLs."""

import asyncio
import base64
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "assets" / "examples" / "idrid_test_008_grade2_moderate_npdr.jpg"


def _data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


async def _session_calls(url: str, calls: list[tuple[str, dict]]) -> tuple[list[str], list]:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        tools = [tool.name for tool in (await session.list_tools()).tools]
        results = [await session.call_tool(name, arguments) for name, arguments in calls]
    return tools, results


def _json_of(result) -> dict:
    texts = [item.text for item in result.content if item.type == "text"]
    return json.loads(texts[0])                     # the first text is the answer, as JSON


def test_agents_list_the_tools_grade_a_photo_and_are_told_when_a_picture_is_refused(app_url, tmp_path):
    pytest.importorskip("mcp")
    from PIL import Image
    blank = tmp_path / "page.png"
    Image.new("RGB", (500, 400), (255, 255, 255)).save(blank)
    tools, (graded, compared, refused) = asyncio.run(_session_calls(app_url + "gradio_api/mcp/", [
        ("grade", {"image": _data_url(EXAMPLE, "image/jpeg"), "model": "inception"}),
        ("compare", {"image": _data_url(EXAMPLE, "image/jpeg")}),
        ("grade", {"image": _data_url(blank, "image/png")}),
    ]))
    assert set(tools) == {"grade", "compare"}
    assert not graded.isError
    answer = _json_of(graded)
    assert answer["graded"] and answer["model"] == "InceptionV3" and answer["decision"] in (
        "Do not refer", "Refer: retinopathy", "Refer: macular oedema", "Refer: retinopathy and macular oedema")
    assert set(answer["grade_probabilities"]) == {"No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR",
                                                  "Proliferative DR"}
    assert 0 < answer["referable_threshold"] < 1 and answer["image_check"]["outcome"] in ("accepted", "warned")
    assert answer["answered_by"]["checkpoint"].endswith("inception_v3")
    assert any(item.type == "image" for item in graded.content)           # the heat map over the photo
    both = _json_of(compared)
    assert [m["model"] for m in both["models"]] == ["MedMamba-T", "InceptionV3"] and "same_referral" in both
    assert any(item.type == "image" for item in compared.content)
    text = " ".join(item.text for item in refused.content if item.type == "text")
    assert "refused" in text and "does not look like a fundus photo" in text


def test_startup_warns_in_the_log_when_a_fallback_is_served(app_process):
    log = app_process.log.read_text()
    assert "WARNING drdemo.serving.slots: medmamba: FALLBACK" in log
    assert "WARNING drdemo.serving.slots: inception: FALLBACK" in log


def test_the_tools_can_be_switched_off():
    import app
    assert app.mcp_enabled({}) and app.mcp_enabled({"DRDEMO_MCP": "1"})
    assert not app.mcp_enabled({"DRDEMO_MCP": "0"}) and not app.mcp_enabled({"DRDEMO_MCP": "off"})
