"""Helpers several test modules share (imported as ``helpers``: pytest puts tests/ on the path)."""
from accel_lib import AksWebservice, Webservice


def deploy(img, target, name, **cfg):
    """Deploy ``img`` to ``target`` as ``name`` and wait until it serves; without keys unless the test asks
    (test_keys_are_on_by_default_on_aks checks the default)."""
    cfg.setdefault("auth_enabled", False)
    svc = Webservice.deploy_from_image(img.workspace, name, img, AksWebservice.deploy_configuration(**cfg), target)
    svc.wait_for_deployment(timeout=120)
    return svc


def save_keras_h5(layers, path):
    """Write weights in the Keras application file layout (layer_names / weight_names attributes)."""
    from accel_lib.models.weights import write_h5
    write_h5(layers, path)


def container_engine():
    """(engine, base image) that can start containers here, else the test is skipped with the engine's reason, or
    fails where $ACCEL_LIB_REQUIRE_CONTAINERS=1 (.ci/run sets it once it has installed podman)."""
    import os

    import pytest

    from accel_lib.fpga.cluster import containers
    engine, why = containers.find_engine()
    base = None
    if engine is not None:
        base, why = containers.ready(engine, log=lambda _: None)
    if why:
        if os.environ.get("ACCEL_LIB_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"containers are required here ($ACCEL_LIB_REQUIRE_CONTAINERS=1) but: {why}")
        pytest.skip(f"no container engine can run containers here ({why}); install podman (apt-get install podman "
                    "runc mmdebstrap) and the containers.conf lines it names, as .ci/run does with CI=true")
    return engine, base


def length_delimited(tag: bytes, payload: bytes) -> bytes:
    """One length-delimited protobuf field encoded by hand (attacks are not what a serializer writes)."""
    n, out = len(payload), bytearray(tag)
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n]) + payload


def chromium(profile_dir, size="1400,1800", console=False):
    """A headless Chromium driven by Selenium (Debian's chromium and chromium-driver), else the test is skipped with
    how to install them; ``console`` keeps the pages' console messages (driver.get_log("browser"))."""
    import shutil

    import pytest
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver_path):
        pytest.skip("headless Chromium is not installed: 'apt-get install chromium chromium-driver' enables this "
                    "test (.ci/run installs them when CI=true)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile_dir}", f"--window-size={size}"):
        opts.add_argument(arg)
    if console:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=opts)
