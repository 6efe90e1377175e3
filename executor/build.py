"""`forge build`: turn the IR's image blocks into images in the project's store.

Building writes only to the content-addressed store: it never touches running workloads, so
`forge plan` can build what it needs first and name every image by digest.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from compiler.plan import ImageFacts
from forgefile import ir
from forgefile.diagnostics import Diagnostic, DiagnosticError, Span

from .images import CopyStep, ImageConfig, ImageError, ImageStore, LinkStep, Step

log = logging.getLogger(__name__)


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH if set (reproducible builds), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return int(value)
    except ValueError:
        raise DiagnosticError(
            [
                Diagnostic(
                    "B0002",
                    f"SOURCE_DATE_EPOCH={value!r} is not an integer",
                    None,
                    "unset it, or give seconds since 1970",
                )
            ]
        ) from None


def build_images(
    doc: ir.Document,
    store: ImageStore,
    on_built: Callable[[str, str], None] | None = None,
) -> dict[str, ImageFacts]:
    """Build every image of `doc`, parents first; returns each image's digest and defaults."""
    images = {r.address: r for r in doc.resources if isinstance(r, ir.Image)}
    facts: dict[str, ImageFacts] = {}
    epoch = source_date_epoch()

    # TODO(#10): a step cache keyed by the parent's digest and the step's inputs, so that an
    # unchanged image costs nothing; today every build re-reads and hashes its context (only
    # the compression of a layer the store holds already is skipped).
    def build(image: ir.Image) -> ImageFacts:
        if image.address in facts:
            return facts[image.address]
        parent = None
        if not isinstance(image.from_, str):
            parent = build(images[image.from_.address]).digest
        steps: list[Step] = [_step(s) for s in image.steps]
        config = ImageConfig(
            env=tuple(image.env),
            entrypoint=image.entrypoint,
            cmd=image.command,
            working_dir=image.working_dir,
            user=image.user,
        )
        try:
            digest = store.build(_tag(image), Path(image.context), steps, config, parent, epoch)
        except ImageError as exc:
            raise DiagnosticError(
                [
                    Diagnostic(
                        "B0001",
                        f"building {image.address} failed: {exc}",
                        _step_span(image, str(exc)),
                        "fix the step it names",
                    )
                ]
            ) from None
        built = _facts(store, digest)
        facts[image.address] = built
        if on_built is not None:
            on_built(image.address, digest)
        return built

    for image in images.values():
        build(image)
    for source in _sources(doc):
        if source.ref not in facts:
            facts[source.ref] = _facts(store, _import(store, source))
            if on_built is not None:
                on_built(source.ref, facts[source.ref].digest)
    return facts


def _sources(doc: ir.Document) -> list[ir.ImageSource]:
    return [
        r.image
        for r in doc.resources
        if isinstance(r, ir.Container) and isinstance(r.image, ir.ImageSource)
    ]


def _import(store: ImageStore, source: ir.ImageSource) -> str:
    """The digest of the image a source names, imported into the store (blobs it has already
    are not copied again)."""
    from .image_import import import_image

    try:
        imported = import_image(store, Path(source.path), source.tag or None, need_tag=False)
    except ImageError as exc:
        raise DiagnosticError(
            [Diagnostic("B0003", f"reading {source.ref} failed: {exc}", source.span, exc.hint)]
        ) from None
    if len({i.digest for i in imported}) > 1:
        names = ", ".join(sorted(i.tag for i in imported if i.tag)) or "untagged images"
        raise DiagnosticError(
            [
                Diagnostic(
                    "B0003",
                    f"{source.ref} holds {len(imported)} images ({names}); say which",
                    source.span,
                    f'name one: "{source.kind}:PATH:TAG"',
                )
            ]
        )
    return imported[0].digest


def _step_span(image: ir.Image, message: str) -> Span:
    """The span of the step an image error names ("step 2 (...)"), else the image's."""
    found = re.match(r"step (\d+)\b", message)
    if found and 1 <= int(found.group(1)) <= len(image.steps):
        return image.steps[int(found.group(1)) - 1].span
    return image.span


def module_digests(doc: ir.Document) -> dict[str, str]:
    """The digest of every WASM module's bytes, which the plan pins."""
    from .wasm import module_digest

    return {
        r.address: module_digest(Path(r.module)) for r in doc.resources if isinstance(r, ir.Wasm)
    }


def _tag(image: ir.Image) -> str:
    return image.instance  # module-qualified, so two modules' "base" images do not collide


def _step(step: ir.CopyStep | ir.LinkStep) -> Step:
    if isinstance(step, ir.CopyStep):
        return CopyStep(dst=step.dst, src=step.src, content=step.content, mode=step.mode)
    return LinkStep(target=step.target, links=step.links)


def _facts(store: ImageStore, digest: str) -> ImageFacts:
    config = store.config(digest).get("config", {})
    env = tuple(tuple(e.split("=", 1)) for e in config.get("Env") or [] if "=" in e)
    return ImageFacts(
        digest=digest,
        env=tuple((k, v) for k, v in env),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        command=tuple(config.get("Cmd") or ()),
        working_dir=config.get("WorkingDir") or "",
        user=config.get("User") or "",
    )
