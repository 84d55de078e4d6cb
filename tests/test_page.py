"""The page's layout: each checkpoint's own threshold on its sliders, models named as people name them,
the example strips captioned with the true grade, and the named API endpoints wired to the handlers."""

from drdemo.checkpoint import CheckpointConfig
from drdemo.models import create_model
from drdemo.predictor import Predictor
from drdemo.serving.slots import ServedModel
from drdemo.ui import handlers, page


def _served(low: float = 0.3, high: float = 0.7) -> list[ServedModel]:
    first = CheckpointConfig.for_architecture("resnet50", input_size=64, referable_threshold=low,
                                              provenance={"trained": True, "data": "x"})
    second = CheckpointConfig.for_architecture("vgg16", input_size=96, display_name="Big VGG",
                                               referable_threshold=high, provenance={"trained": True, "data": "x"})
    return [ServedModel("medmamba", Predictor(create_model("resnet50", num_classes=5), first), "org/a @ 1234567",
                        False),
            ServedModel("inception", Predictor(create_model("vgg16", num_classes=5), second), "org/b @ 89abcde",
                        False)]


def test_sliders_start_at_each_checkpoints_own_threshold():
    demo = page.build_demo(_served())
    sliders = [c for c in demo.blocks.values() if type(c).__name__ == "Slider" and "Referral" in (c.label or "")]
    assert sorted(round(s.value, 2) for s in sliders) == [0.3, 0.3, 0.3, 0.7, 0.7]   # Grade; Compare, Batch


def test_the_named_endpoints_take_the_handlers_outputs_in_order():
    demo = page.build_demo(_served())
    endpoints = {fn.api_name: fn for fn in demo.fns.values()
                 if fn.api_name in ("grade", "compare", "batch", "grade_tool", "compare_tool")}
    assert {name: len(fn.outputs) for name, fn in endpoints.items()} == {
        "grade": 8, "compare": 12, "batch": 3, "grade_tool": 2, "compare_tool": 2}
    grade_outputs = [type(c).__name__ for c in endpoints["grade"].outputs]
    assert grade_outputs == ["Markdown", "Markdown", "Label", "Label", "ImageSlider", "Markdown", "Markdown", "JSON"]
    compare_ids = [c.elem_id for c in endpoints["compare"].outputs]
    assert compare_ids[:4] == ["agreement", "compare-check", "compare-chart-a", "compare-chart-b"]
    assert compare_ids[6:8] == ["compare-cam-a", "compare-cam-b"]
    assert compare_ids[-2] == "compare-check-values" and endpoints["grade"].outputs[-2].elem_id == "grade-check-values"
    # the API page names every output after its field: no value_25
    returns = {name: [r["label"] for r in endpoint["returns"]]
               for name, endpoint in demo.get_api_info()["named_endpoints"].items()}
    assert returns["/grade"] == ["decision", "upload_note", "Grade probabilities", "DME risk probabilities",
                                 "Heat map (drag the handle to uncover the photo)", "explanation", "check_details",
                                 "result"]
    assert returns["/compare"] == list(handlers.CompareOutputs._fields)
    assert returns["/batch"] == ["Summary", "Results (CSV)", "Gallery"]
    assert returns["/grade_tool"] == returns["/compare_tool"] == ["result", "heat_map"]
    assert not any(label.startswith("value_") for labels in returns.values() for label in labels)


def test_the_decision_sits_first_and_the_heat_map_opens_fully_drawn():
    demo = page.build_demo(_served())
    grade = next(fn for fn in demo.fns.values() if fn.api_name == "grade")
    assert grade.outputs[0].elem_id == "verdict"
    slider = next(c for c in demo.blocks.values() if type(c).__name__ == "ImageSlider")
    assert slider.slider_position == 0
    labels = [c for c in demo.blocks.values() if type(c).__name__ == "Label"]
    assert labels and not any(c.show_heading for c in labels)   # no big headline that could contradict the decision


def test_only_grade_and_compare_are_agents_tools():
    demo = page.build_demo(_served())
    tools = {fn.fn.__name__ for fn in demo.fns.values()
             if fn.fn is not None and fn.api_name and getattr(fn.fn, "_mcp_type", "tool") == "tool"
             and fn.api_visibility == "public"}
    assert tools == {"grade", "compare"}


def test_the_image_checks_measured_values_sit_in_a_closed_section():
    components = list(page.build_demo(_served()).blocks.values())
    sections = [c for c in components if type(c).__name__ == "Accordion" and c.label == "Image check details"]
    assert [s.elem_id for s in sections] == ["grade-check-details", "compare-check-details"]
    assert not any(s.open for s in sections)


def test_the_page_names_models_as_people_do_and_says_how_to_read_it():
    components = list(page.build_demo(_served()).blocks.values())
    dropdown = next(c for c in components if type(c).__name__ == "Dropdown" and c.label == "Model")
    assert [choice[0] for choice in dropdown.choices] == ["ResNet50", "Big VGG"]
    markdown = "\n".join(str(c.value) for c in components if type(c).__name__ == "Markdown")
    assert "**ResNet50** (`resnet50`): org/a @ 1234567" in markdown      # the registry id in the details
    assert "Model card: Big VGG (`vgg16`)" in markdown
    assert markdown.count("**Referral line**") == 2 and markdown.count("**Heat map**") == 2   # Grade, Compare
    galleries = [c for c in components if type(c).__name__ == "Gallery" and (c.elem_id or "").endswith("-examples")]
    assert len(galleries) == 2 and all("IDRiD test photos" in g.label and "Grade 4: Proliferative DR" in str(g.value)
                                       for g in galleries)           # thumbnails captioned with the true grade
