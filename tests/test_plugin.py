"""The pytest plugin (``pytest11`` entry point), exercised with ``pytester`` in subprocesses."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from .conftest import seconds
from .test_examples import _readme_snippets

pytestmark = pytest.mark.slow

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "test_with_emulator.py"


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=seconds(60))


def test_registered_as_a_pytest11_entry_point() -> None:
    """The installed package names the plugin module in the pytest11 group."""
    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "diffusionmaster"]
    assert plugin.value == "diffusionmaster.testing.pytest_plugin"


def test_fixtures_give_a_client_on_the_emulator(pytester: pytest.Pytester) -> None:
    """A test file with no conftest gets a client connected to the emulator fixture."""
    pytester.makepyfile(
        """
        def test_generate(diffusionmaster_client, diffusionmaster_emulator):
            (image,) = diffusionmaster_client.text2img("a red fox")
            assert image.url.startswith(diffusionmaster_emulator.http_url)
            assert diffusionmaster_emulator.connections_opened == 1
        """
    )
    _run(pytester).assert_outcomes(passed=1)


def test_emulator_fixture_injects_faults(pytester: pytest.Pytester) -> None:
    """The emulator fixture is the fault injector of the server the client uses."""
    pytester.makepyfile(
        """
        import pytest
        from diffusionmaster import TaskError

        def test_failure(diffusionmaster_client, diffusionmaster_emulator):
            diffusionmaster_emulator.fail_next_task(77, "injected")
            with pytest.raises(TaskError) as caught:
                diffusionmaster_client.text2img("x")
            assert caught.value.error_id == 77
        """
    )
    _run(pytester).assert_outcomes(passed=1)


def test_api_key_fixture_can_be_overridden(pytester: pytest.Pytester) -> None:
    """Overriding diffusionmaster_api_key changes the key the emulator accepts and the client sends."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        def diffusionmaster_api_key():
            return "my-key"

        def test_key(diffusionmaster_client, diffusionmaster_emulator):
            assert diffusionmaster_emulator.api_keys == frozenset({"my-key"})
            assert diffusionmaster_client.enhance_prompt("x")
        """
    )
    _run(pytester).assert_outcomes(passed=1)


def test_fixture_names_are_prefixed(pytester: pytest.Pytester) -> None:
    """Every fixture of the plugin is named diffusionmaster_*, so none shadows a user's."""
    result = _run(pytester, "--fixtures")
    lines = result.stdout.lines
    start = next(
        i for i, line in enumerate(lines) if "diffusionmaster.testing.pytest_plugin" in line
    )
    names = [
        line.split()[0]
        for line in lines[start + 1 :]
        if line and not line.startswith((" ", "-", "="))
    ][:3]
    assert sorted(names) == [
        "diffusionmaster_api_key",
        "diffusionmaster_client",
        "diffusionmaster_emulator",
    ]


def test_example_test_file_passes(pytester: pytest.Pytester) -> None:
    """examples/test_with_emulator.py, the README's example, passes with the plugin."""
    pytester.makepyfile(test_with_emulator=EXAMPLE.read_text())
    _run(pytester).assert_outcomes(passed=3)


def test_readme_example_passes(pytester: pytest.Pytester) -> None:
    """The README's pytest plugin example passes."""
    (code,) = [c for _, marker, c in _readme_snippets() if marker == "pytest"]
    pytester.makepyfile(test_readme=code)
    _run(pytester).assert_outcomes(passed=2)


def _run_without(
    tmp_path: Path, modules: list[str], fixture: str
) -> subprocess.CompletedProcess[str]:
    """Run pytest in a subprocess where ``modules`` cannot be imported, on one test
    that uses ``fixture``."""
    (tmp_path / "test_it.py").write_text(f"def test_it({fixture}):\n    pass\n")
    blocked = "; ".join(f"sys.modules[{module!r}] = None" for module in modules)
    code = (
        f"import sys; {blocked}\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-p', 'no:cacheprovider', '-q', sys.argv[1]]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "test_it.py")],
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
        cwd=tmp_path,
    )


def test_plugin_loads_without_the_emulator_extra(tmp_path: Path) -> None:
    """Without websockets and Pillow, pytest still starts and a test using the fixtures
    fails with the install hint."""
    result = _run_without(tmp_path, ["websockets", "PIL"], "diffusionmaster_client")
    assert result.returncode == 1  # one failed test, not a crash at start-up (3 or 4)
    assert 'pip install "diffusionmaster[emulator]"' in result.stdout


@pytest.mark.parametrize("module", ["websockets", "PIL"])
def test_missing_extra_message_names_the_missing_module(tmp_path: Path, module: str) -> None:
    """A fixture used without one of the emulator extra's modules names that module."""
    result = _run_without(tmp_path, [module], "diffusionmaster_emulator")
    assert result.returncode == 1
    assert (
        f"diffusionmaster_emulator needs the emulator extra (the module {module} is missing): "
        'pip install "diffusionmaster[emulator]"'
    ) in result.stdout
