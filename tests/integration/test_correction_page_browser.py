"""The correction page in a real browser: a dentist's drag, click and Shift-click on a
scaled-down frame reach the running node as a box and points in the frame's own pixels,
the amended mask comes back; a box drawn by touch (a tablet) does too; a wrong token, an
unknown instance or an empty correction shows an error.

Headless Chromium (Debian ``chromium`` + ``chromium-driver``) drives the page served by
``python -m dicom_service serve``; the video reaches the node by C-STORE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests import builders
from tests.browser import console_errors, headless_chromium, spki_pin
from tests.dicomnet import store
from tests.integration.node import NodeProcess
from tests.integration.tools import wait_until
from tests.tlscerts import Pki

ROWS, COLS, FRAMES = 480, 640, 6
#: A window smaller than the frame: the page scales the frame down (70 % of the height),
#: so the test also checks the mapping from screen to frame pixels.
WINDOW = (900, 640)


def _status(driver: Any) -> tuple[str, str]:
    element = driver.find_element("id", "status")
    return element.text, element.get_attribute("class") or ""


def _wait_status(driver: Any, done: Callable[[str, str], bool], timeout: float, what: str) -> tuple[str, str]:
    try:
        wait_until(lambda: done(*_status(driver)), timeout, what=what)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; the page's status: {_status(driver)!r}") from None
    return _status(driver)


def _frame_geometry(driver: Any, element: str = "frame") -> dict[str, float]:
    """Where the image ``element`` (its id) is on screen (CSS pixels, viewport) and its size
    in pixels."""
    return driver.execute_script(
        "const img = document.getElementById(arguments[0]); img.scrollIntoView({block: 'center'});"
        "const r = img.getBoundingClientRect();"
        "return {left: r.left, top: r.top, width: r.width, height: r.height,"
        "        naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight};", element)


def _pointer(driver: Any, *, touch: bool = False) -> Any:
    """A WebDriver action builder whose pointer is a mouse or, with ``touch``, a finger."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    if not touch:
        return ActionBuilder(driver)
    return ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))


def _processed_video(node: NodeProcess) -> str:
    """Store one 640x480 video in the running ``node``, wait for its processing; its SOP Instance UID."""
    video = builders.make_video_photographic(frames=FRAMES, rows=ROWS, cols=COLS, seed=3)
    assert store(node.dicom_port, video) == 0
    wait_until(lambda: any(j["state"] == "succeeded" for j in node.jobs(kind="process")), 180,
               interval=0.2, what="the video's processing job", alive=node.check_alive)
    return str(video.SOPInstanceUID)


@pytest.fixture
def processed_video_node(node_factory: Callable[..., NodeProcess]) -> tuple[NodeProcess, str]:
    """A running node that has processed one 640x480 video; its SOP Instance UID."""
    node = node_factory().start()
    return node, _processed_video(node)


def test_a_dentist_corrects_a_frame_in_the_browser(processed_video_node) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    node, sop = processed_video_node
    with headless_chromium(*WINDOW) as driver:
        driver.get(f"{node.url}/ui/correct")
        field = driver.find_element
        # a wrong token first: the list and the frame are refused (401), nothing is shown
        field("id", "token").send_keys("not-the-token", Keys.TAB)
        _wait_status(driver, lambda t, c: t.startswith("listing the processed photos and videos: 401"), 30,
                     "the list refused")
        field("id", "sop").send_keys(sop)
        field("id", "frameNumber").clear()
        field("id", "frameNumber").send_keys("2")
        field("id", "load").click()
        text, css = _wait_status(driver, lambda t, c: t.startswith("401"), 30, "the page's 401 message")
        assert css == "error" and field("id", "patient").text == ""
        assert field("id", "signedIn").text.startswith("The token is not accepted (401")
        assert driver.execute_script("return document.getElementById('frame').naturalWidth") == 0
        console_errors(driver)  # the failed fetches log their 401; what follows must log nothing

        field("id", "token").clear()
        field("id", "token").send_keys(node.token, Keys.TAB)
        wait_until(lambda: len(Select(field("id", "recent")).options) == 2, 30, what="the list of processed videos")
        assert field("id", "signedIn").text.startswith("Signed in with a service token: corrections carry no name")
        option = Select(field("id", "recent")).options[1]
        assert option.get_attribute("value") == sop
        label = f"2024-01-02 · PHANTOM, IMPLANT (PH0001) · XC video, {FRAMES} frames"
        assert option.text.startswith(label), option.text
        field("id", "load").click()
        text, css = _wait_status(driver, lambda t, c: t.startswith("frame 2"), 60, "frame 2 shown")
        assert css == "" and text == "frame 2; masks shown: ai", text
        assert field("id", "frameCount").text == f"of {FRAMES} (0 to {FRAMES - 1})"
        # whose images these are, before any click; and a link to this frame
        assert field("id", "patient").text.startswith(
            "Patient: PHANTOM, IMPLANT · ID PH0001 · born 1970-01-01 · "), field("id", "patient").text
        assert driver.execute_script("return location.hash") == f"#sop={sop}&frame=2"
        wait_until(lambda: _frame_geometry(driver)["naturalWidth"] == COLS, 30, what="the frame image decoded")
        geometry = _frame_geometry(driver)
        assert geometry["naturalHeight"] == ROWS
        scale = COLS / geometry["width"]
        assert scale > 1.2, f"the frame should be shown scaled down in a {WINDOW} window: {geometry}"

        def screen(x: float, y: float) -> tuple[int, int]:
            """Viewport point (whole CSS pixels) over the frame pixel (x, y)."""
            return round(geometry["left"] + x / scale), round(geometry["top"] + y / scale)

        def image(point: tuple[int, int]) -> tuple[float, float]:
            """The frame pixel the page should compute for a viewport point."""
            return (point[0] - geometry["left"]) * scale, (point[1] - geometry["top"]) * scale

        corner_a, corner_b = screen(520, 380), screen(120, 90)  # dragged up and to the left
        click, unclick = screen(300, 240), screen(40, 440)
        actions = _pointer(driver)
        actions.pointer_action.move_to_location(*corner_a).pointer_down()
        actions.pointer_action.move_to_location(*corner_b).pointer_up()
        actions.pointer_action.move_to_location(*click).click()
        actions.perform()
        actions.pointer_action.move_to_location(*unclick)
        actions.perform()
        # Shift held from press to release (the page reads it on release)
        ActionChains(driver).key_down(Keys.SHIFT).click().key_up(Keys.SHIFT).perform()
        # a click by mistake, taken back with Ctrl+Z
        actions = _pointer(driver)
        actions.pointer_action.move_to_location(*screen(600, 40)).click()
        actions.perform()
        mark = "return document.getElementById('marks').getContext('2d').getImageData(600, 40, 1, 1).data[3];"
        assert driver.execute_script(mark) > 0
        ActionChains(driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
        assert driver.execute_script(mark) == 0

        # the marks are drawn over the frame, in its pixels: a gold box, a blue and a red dot
        top_edge = int(image(corner_b)[1])
        drawn = driver.execute_script(
            "const c = document.getElementById('marks'); const g = c.getContext('2d');"
            "const px = (x, y) => Array.from(g.getImageData(x, y, 1, 1).data);"
            "return {w: c.width, h: c.height, edge: px(320, arguments[0]), blue: px(300, 240), red: px(40, 440),"
            "        empty: px(600, 20)};", top_edge)
        assert (drawn["w"], drawn["h"]) == (COLS, ROWS)
        assert drawn["edge"][:3] == [255, 215, 0] and drawn["edge"][3] > 0, drawn
        assert drawn["blue"][:3] == [30, 144, 255] and drawn["red"][:3] == [255, 48, 48], drawn
        assert drawn["empty"][3] == 0, drawn

        # the frame number typed meanwhile does not move the prompts to another frame
        field("id", "frameNumber").clear()
        field("id", "frameNumber").send_keys("5")
        field("id", "radius").send_keys("1")
        field("id", "send").click()
        text, css = _wait_status(driver, lambda t, c: "amended Segmentation made" in t or c == "error", 120,
                                 "the correction to finish")
        assert css == "" and text.startswith("frame 2; masks shown: correction "), text
        wait_until(lambda: Select(field("id", "recent")).options[1].text.endswith("corrected 1×"), 30,
                   what="the list to count the correction")
        assert console_errors(driver) == []

    corrections = node.jobs(kind="correct")
    assert len(corrections) == 1 and corrections[0]["state"] == "succeeded", corrections
    sent = corrections[0]["payload"]["correction"]
    assert sent["frame"] == 2 and sent["radius"] == 1 and corrections[0]["payload"]["restore"] is False
    box, expected = sent["box"], [*image(corner_b), *image(corner_a)]
    assert box == pytest.approx(expected, abs=1.0), (box, expected)
    assert box == pytest.approx([120, 90, 520, 380], abs=scale + 1.0)
    assert sent["labels"] == [1, 0]
    for got, want in zip(sent["points"], (image(click), image(unclick)), strict=True):
        assert got == pytest.approx(list(want), abs=1.0)
    # the API shows the same frame with the dentist's mask, and the frames beside it too
    for frame in (1, 2, 3):
        reply = node.client.get(f"/instances/{sop}/frames/{frame}", params={"masks": "latest"})
        assert reply.status_code == 200 and reply.headers["x-mask-source"].startswith("correction "), frame


def test_the_page_reports_bad_input_and_takes_a_box_drawn_by_touch(processed_video_node) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    node, sop = processed_video_node
    with headless_chromium(*WINDOW) as driver:
        # a link to frame 1, through the trailing-slash redirect: the fragment survives it
        driver.get(f"{node.url}/ui/correct/#sop={sop}&frame=1")
        assert driver.current_url == f"{node.url}/ui/correct#sop={sop}&frame=1"
        field = driver.find_element
        assert field("id", "sop").get_attribute("value") == sop
        assert field("id", "frameNumber").get_attribute("value") == "1"
        field("id", "send").click()  # nothing shown yet
        text, css = _wait_status(driver, lambda t, c: c == "error", 10, "the page's refusal")
        assert text == "show a frame first", text
        field("id", "token").send_keys(node.token, Keys.TAB)  # the linked frame loads once the token is in
        _wait_status(driver, lambda t, c: t.startswith("frame 1; masks shown: ai"), 60, "the linked frame shown")
        patient = field("id", "patient").text
        assert patient.startswith("Patient: PHANTOM, IMPLANT · ID PH0001"), patient
        field("id", "sop").clear()
        field("id", "sop").send_keys("1.2.3.999")
        field("id", "load").click()
        text, css = _wait_status(driver, lambda t, c: t.startswith("404"), 30, "the 404 for an unknown instance")
        assert css == "error", text
        assert field("id", "patient").text == patient  # the frame on screen is still that patient's
        Select(field("id", "recent")).select_by_value(sop)
        _wait_status(driver, lambda t, c: t.startswith("frame 0"), 60, "frame 0 shown")
        assert field("id", "sop").get_attribute("value") == sop
        # the arrow keys step through the frames (outside the page's fields)
        field("id", "patient").click()
        ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
        _wait_status(driver, lambda t, c: t.startswith("frame 1"), 60, "frame 1 shown by →")
        assert field("id", "frameSlider").get_attribute("value") == "1"
        ActionChains(driver).send_keys(Keys.ARROW_LEFT).perform()
        _wait_status(driver, lambda t, c: t.startswith("frame 0"), 60, "frame 0 shown by ←")
        field("id", "send").click()  # no click, no box
        text, css = _wait_status(driver, lambda t, c: c == "error", 10, "the page's refusal")
        assert "click" in text or "box" in text, text
        assert node.jobs(kind="correct") == []

        # a box drawn with a finger on a tablet: a touch pointer, not a mouse
        wait_until(lambda: _frame_geometry(driver)["naturalWidth"] == COLS, 30, what="the frame image decoded")
        geometry = _frame_geometry(driver)
        scale = COLS / geometry["width"]
        start = (round(geometry["left"] + 100 / scale), round(geometry["top"] + 80 / scale))
        end = (round(geometry["left"] + 400 / scale), round(geometry["top"] + 300 / scale))
        touch = _pointer(driver, touch=True)
        touch.pointer_action.move_to_location(*start).pointer_down()
        for step in range(1, 6):  # a finger moves in steps, as a drag does
            touch.pointer_action.move_to_location(start[0] + (end[0] - start[0]) * step // 5,
                                                  start[1] + (end[1] - start[1]) * step // 5)
        touch.pointer_action.pointer_up()
        touch.perform()
        # the correction's reply is held back while the dentist moves on to frame 1 and
        # clicks there: when it comes, frame 1 and its click stay on screen
        driver.execute_script(
            "const real = window.fetch; window.releaseCorrection = null;"
            "window.fetch = (url, options) => String(url).startsWith('/corrections')"
            "  ? new Promise((resolve) => { window.releaseCorrection = () => resolve(real(url, options)); })"
            "  : real(url, options);")
        field("id", "send").click()
        wait_until(lambda: driver.execute_script("return window.releaseCorrection !== null"), 10,
                   what="the correction request held")
        assert field("id", "send").get_attribute("disabled") is not None  # one at a time
        field("id", "patient").click()
        ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
        _wait_status(driver, lambda t, c: t.startswith("frame 1"), 60, "frame 1 shown while the correction runs")
        actions = _pointer(driver)
        actions.pointer_action.move_to_location(*start).click()
        actions.perform()
        driver.execute_script("window.releaseCorrection();")
        text, css = _wait_status(driver, lambda t, c: "is done" in t or c == "error", 120,
                                 "the held correction to finish")
        assert css == "" and text.startswith(f"the correction of frame 0 of {sop} is done"), text
        assert field("id", "frameNumber").get_attribute("value") == "1"
        dot = "return document.getElementById('marks').getContext('2d').getImageData(100, 80, 1, 1).data[3];"
        assert driver.execute_script(dot) > 0  # the click on frame 1 is still there
        assert field("id", "send").get_attribute("disabled") is None
    corrections = node.jobs(kind="correct")
    assert len(corrections) == 1, corrections
    sent = corrections[0]["payload"]["correction"]
    assert sent["frame"] == 0 and sent["points"] is None
    assert sent["box"] == pytest.approx([100, 80, 400, 300], abs=scale + 1.0)


def test_the_page_works_over_https(node_factory: Callable[..., NodeProcess], pki: Pki) -> None:
    """``http.tls``: the page, its scripts, the list, a frame and a correction over HTTPS
    (Chromium trusts exactly the node's certificate, by its public key)."""
    dentist, dentist_token = "Łukasiewicz^Jan^^Dr", "dentist-" + "0123456789abcdef"
    node = node_factory(https_ca=pki.ca, settings={"http": {"tls": {
        "certificate": str(pki.node.certificate), "private_key": str(pki.node.private_key)},
        "users": [{"name": dentist, "token": dentist_token}]}}).start()
    sop = _processed_video(node)
    assert node.url.startswith("https://")
    pin = f"--ignore-certificate-errors-spki-list={spki_pin(pki.node.certificate)}"
    with headless_chromium(*WINDOW, arguments=(pin,)) as driver:
        driver.get(f"{node.url}/ui/correct#sop={sop}&frame=3")
        field = driver.find_element
        field("id", "token").send_keys(dentist_token, "\t")  # a named dentist's own token
        _wait_status(driver, lambda t, c: t.startswith("frame 3; masks shown: ai") or c == "error", 60,
                     "frame 3 over HTTPS")
        assert field("id", "signedIn").text == "Signed in as Łukasiewicz, Dr Jan: your corrections carry your name."
        assert field("id", "patient").text.startswith("Patient: PHANTOM, IMPLANT")
        geometry = _frame_geometry(driver)
        scale = COLS / geometry["width"]
        actions = _pointer(driver)
        actions.pointer_action.move_to_location(round(geometry["left"] + 320 / scale),
                                                round(geometry["top"] + 240 / scale)).click()
        actions.perform()
        field("id", "send").click()
        text, css = _wait_status(driver, lambda t, c: "amended Segmentation made" in t or c == "error", 120,
                                 "the correction over HTTPS")
        assert css == "", text
        assert console_errors(driver) == []
    corrections = node.jobs(kind="correct")
    assert len(corrections) == 1 and corrections[0]["payload"]["correction"]["frame"] == 3
    assert corrections[0]["payload"]["correction"]["operator"] == dentist  # under the dentist's name
