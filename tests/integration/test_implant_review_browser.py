"""The implant review page in a real browser: a dentist drops an AI finding with a click,
draws a box around the implant instead, names a system, and the running node makes the
corrected objects under the dentist's name.

Headless Chromium drives ``/ui/implants`` served by ``python -m dicom_service serve``; the
radiograph reaches the node by C-STORE.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests import builders
from tests.browser import console_errors, headless_chromium
from tests.dicomnet import store
from tests.integration.node import NodeProcess
from tests.integration.test_correction_page_browser import _frame_geometry, _pointer, _status, _wait_status
from tests.integration.tools import wait_until

#: A window in which the 416 x 416 radiograph is shown scaled down (75 % of the height).
WINDOW = (1000, 520)
DENTIST, DENTIST_TOKEN = "Smith^Anna^^Dr", "anna-" + "0123456789abcdef"


def test_a_dentist_reviews_the_implants_in_the_browser(node_factory: Callable[..., NodeProcess]) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    node = node_factory(settings={"http": {"users": [{"name": DENTIST, "token": DENTIST_TOKEN}]}}).start()
    radiograph, truth = builders.make_periapical_phantom_with_truth(seed=10003, implants=2)
    assert store(node.dicom_port, radiograph) == 0
    wait_until(lambda: any(j["state"] == "succeeded" for j in node.jobs(kind="process")), 180,
               interval=0.2, what="the radiograph's processing job", alive=node.check_alive)
    sop = str(radiograph.SOPInstanceUID)
    with headless_chromium(*WINDOW) as driver:
        driver.get(f"{node.url}/ui/implants")
        field = driver.find_element
        field("id", "token").send_keys(DENTIST_TOKEN, Keys.TAB)
        wait_until(lambda: len(Select(field("id", "recent")).options) == 2, 30, what="the list of radiographs")
        assert field("id", "signedIn").text.startswith("Signed in as Smith, Dr Anna")
        option = Select(field("id", "recent")).options[1]
        assert option.get_attribute("value") == sop and "IO radiograph" in option.text, option.text
        Select(field("id", "recent")).select_by_value(sop)
        _wait_status(driver, lambda t, c: t.startswith("2 implant(s) found") or c == "error", 60, "the findings")
        assert field("id", "patient").text.startswith("Patient: PHANTOM, IMPLANT")
        wait_until(lambda: _frame_geometry(driver, "image")["naturalWidth"] == 416, 30, what="the radiograph decoded")
        geometry = _frame_geometry(driver, "image")
        scale = 416 / geometry["width"]
        assert scale > 1.05, geometry  # shown scaled down: the mapping to image pixels is tested

        def screen(x: float, y: float) -> tuple[int, int]:
            return round(geometry["left"] + x / scale), round(geometry["top"] + y / scale)

        # a click inside AI finding 2 drops it; a drag around the implant draws it again
        x0, y0, x1, y1 = truth[1]
        actions = _pointer(driver)
        actions.pointer_action.move_to_location(*screen((x0 + x1) / 2, (y0 + y1) / 2)).click()
        actions.pointer_action.move_to_location(*screen(x0, y0)).pointer_down()
        actions.pointer_action.move_to_location(*screen(x1, y1)).pointer_up()
        actions.perform()
        assert field("id", "summary").text == "1 of 2 AI finding(s) kept, 1 drawn"
        systems = driver.find_elements("css selector", "#implants input[type=text]")
        assert {f.get_attribute("list") for f in systems} == {"known-systems"}  # the catalogue as suggestions
        offered = [o.get_attribute("value") for o in driver.find_elements("css selector", "#known-systems option")]
        assert len(offered) == 8 and all(name.startswith("Synthetic ") for name in offered)
        systems[0].send_keys("Straumann BLT", Keys.TAB)  # a name outside it is taken as well
        field("id", "send").click()
        text, css = _wait_status(driver, lambda t, c: t.startswith("review sent") or c == "error", 120, "the review")
        assert css == "", text
        lines = field("id", "result").text.splitlines()
        assert lines[0].startswith("Implant 1 (AI, certainty") and lines[0].endswith("Straumann BLT (named)")
        assert lines[1].startswith("Implant 2 (drawn): Synthetic"), lines
        assert console_errors(driver) == []
        # the radiograph is listed as reviewed once
        wait_until(lambda: "reviewed 1×" in Select(field("id", "recent")).options[1].text, 30, what="the count")
        assert _status(driver)[1] == ""
    reviews = [j for j in node.jobs(kind="correct") if j["payload"].get("target") == "implants"]
    assert len(reviews) == 1 and reviews[0]["state"] == "succeeded"
    sent = reviews[0]["payload"]["review"]
    assert sent["operator"] == DENTIST and sent["implants"][0] == {"finding": 1, "box": None,
                                                                   "system": "Straumann BLT"}
    assert sent["implants"][1]["finding"] is None
    assert sent["implants"][1]["box"] == pytest.approx(list(truth[1]), abs=scale + 1.0)
