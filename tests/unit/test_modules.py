"""Modules: `import` blocks bring in another Forgefile, with inputs, outputs and namespaces."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from compiler.plan import BuildFacts, ImageFacts, StateSnapshot, plan
from forgefile import ir
from forgefile.diagnostics import DiagnosticError
from forgefile.lower import load

MODULE = """
variable "title" {
  type = string
}
variable "network" {}

image "site" {
  copy {
    content = var.title
    dst     = "/index.html"
  }
}

service "web" {
  image    = image.site
  command  = ["httpd"]
  networks = [var.network]
}

output "web" {
  value = service.web
}
output "heading" {
  value = upper(var.title)
}
output "address" {
  value = service.web.address
}
"""

ROOT = """
network "front" {
  subnet = "10.213.80.0/28"
}

import "blog" {
  source  = "./modules/web"
  title   = "The blog"
  network = network.front
}

import "shop" {
  source  = "./modules/web"
  title   = "The shop"
  network = network.front
}

output "blog_url" {
  value = "http://${blog.web.address}/"
}
output "shop_heading" {
  value = shop.heading
}
"""


def project(tmp_path: Path, root: str = ROOT, module: str = MODULE) -> Path:
    (tmp_path / "modules" / "web").mkdir(parents=True)
    (tmp_path / "modules" / "web" / "Forgefile").write_text(module)
    (tmp_path / "Forgefile").write_text(root)
    return tmp_path


def codes(tmp_path: Path, root: str, module: str = MODULE) -> list[str]:
    with pytest.raises(DiagnosticError) as caught:
        load(project(tmp_path, root, module), environ={})
    return [d.code for d in caught.value.diagnostics]


def test_a_module_imported_twice_makes_two_namespaced_sets_of_resources(tmp_path: Path) -> None:
    """Each import has its own resources, addressed module.NAME.KIND.NAME, sharing the network."""
    doc = load(project(tmp_path), environ={})
    addresses = {r.address for r in doc.resources}
    assert addresses == {
        "network.front",
        "module.blog.image.site",
        "module.blog.service.web",
        "module.shop.image.site",
        "module.shop.service.web",
    }
    blog = doc.resource("module.blog.service.web")
    assert isinstance(blog, ir.Service)
    assert [n.address for n in blog.networks] == ["network.front"]
    assert blog.image_name == "module.blog.image.site"
    assert blog.instance == "blog-web"


def test_module_outputs_reach_the_importer_and_its_plan(tmp_path: Path) -> None:
    """A value output is read as NAME.OUTPUT; a returned resource gives NAME.OUTPUT.address."""
    doc = load(project(tmp_path), environ={})
    images = {
        f"module.{m}.image.site": ImageFacts("sha256:" + c * 64)
        for m, c in (("blog", "a"), ("shop", "b"))
    }
    document = plan(
        doc,
        StateSnapshot("l", 0, "sha256:0"),
        BuildFacts(images=images),
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    outputs = {name: entry["value"] for name, entry in document["outputs"].items()}
    [blog] = [a for a in document["actions"] if a["address"] == "module.blog.service.web"]
    address = blog["spec"]["networks"][0]["address"].split("/")[0]
    assert outputs == {"blog_url": f"http://{address}/", "shop_heading": "THE SHOP"}


def test_an_unknown_input_suggests_the_variable(tmp_path: Path) -> None:
    """A misspelt input is E0153 at the import, with the module's variable suggested."""
    assert "E0153" in codes(tmp_path, ROOT.replace('title   = "The shop"', 'titel = "x"'))


def test_a_missing_input_names_the_import(tmp_path: Path) -> None:
    """A module variable without a default that the import does not give is E0109."""
    assert "E0109" in codes(tmp_path, ROOT.replace('title   = "The blog"', ""))


def test_a_computed_module_output_is_read_when_planning(tmp_path: Path) -> None:
    """`output "address" { value = service.web.address }` in the module: the importer's
    output reads it as NAME.address, and the planner fills in the allocated address."""
    root = ROOT + 'output "blog_address" {\n  value = "${blog.address}:80"\n}\n'
    doc = load(project(tmp_path, root), environ={})
    images = {
        f"module.{m}.image.site": ImageFacts("sha256:" + c * 64)
        for m, c in (("blog", "a"), ("shop", "b"))
    }
    document = plan(
        doc,
        StateSnapshot("l", 0, "sha256:0"),
        BuildFacts(images=images),
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    [blog] = [a for a in document["actions"] if a["address"] == "module.blog.service.web"]
    address = blog["spec"]["networks"][0]["address"].split("/")[0]
    assert document["outputs"]["blog_address"]["value"] == f"{address}:80"


def test_a_computed_module_output_cannot_configure_a_resource(tmp_path: Path) -> None:
    """An address is known only when planning: a resource of the importer cannot take it."""
    root = ROOT + (
        'service "peer" {\n  image = blog.web.image\n  command = ["x"]\n'
        "  env = { BLOG = blog.address }\n}\n"
    )
    assert "E0205" in codes(tmp_path, root)


def test_modules_importing_each_other_are_a_cycle(tmp_path: Path) -> None:
    """A module that imports its importer is E0151, not endless recursion."""
    looping = MODULE + 'import "back" {\n  source = "../.."\n}\n'
    assert "E0151" in codes(tmp_path, ROOT, looping)


def test_reserved_names_cannot_name_a_module(tmp_path: Path) -> None:
    """`import "service"` would hide a block type: E0154."""
    assert "E0154" in codes(tmp_path, ROOT.replace('import "shop"', 'import "service"'))


def test_import_mistakes_are_diagnostics_at_the_source(tmp_path: Path) -> None:
    """A folder without a Forgefile is E0150, a computed source E0155, both at `source`."""
    assert "E0150" in codes(
        tmp_path,
        ROOT.replace(
            '"./modules/web"\n  title   = "The shop"', '"./nowhere"\n  title   = "The shop"'
        ),
    )


def test_a_computed_source_is_refused(tmp_path: Path) -> None:
    """Modules are found before evaluation, so `source` must be written out."""
    root = 'variable "p" { default = "./modules/web" }\n' + ROOT.replace(
        'source  = "./modules/web"\n  title   = "The shop"', 'source = var.p\n  title = "x"'
    )
    assert "E0155" in codes(tmp_path, root)


def test_a_module_cycle_names_every_file(tmp_path: Path) -> None:
    """a imports b imports a: the message lists the root, a, b and a again."""
    (tmp_path / "m" / "a").mkdir(parents=True)
    (tmp_path / "m" / "b").mkdir(parents=True)
    (tmp_path / "m" / "a" / "Forgefile").write_text('import "b" {\n  source = "../b"\n}\n')
    (tmp_path / "m" / "b" / "Forgefile").write_text('import "a" {\n  source = "../a"\n}\n')
    (tmp_path / "Forgefile").write_text('import "a" {\n  source = "./m/a"\n}\n')
    with pytest.raises(DiagnosticError) as caught:
        load(tmp_path, environ={})
    [cycle] = [d for d in caught.value.diagnostics if d.code == "E0151"]
    assert cycle.message.count("m/a/Forgefile") == 2 and "m/b/Forgefile" in cycle.message
