"""The deployment asset: every change of what serves is one materialization, with its action as run config.

The manifest itself lives in the registry (production stage + the newest deployment record), so this asset's
history and the registry's audit log tell the same story, and a rollback from the command line is seen here.
"""

from typing import TYPE_CHECKING, Literal

import dagster as dg
from pydantic import Field

from model_ops.defs.common import attribution, key
from model_ops.defs.resources import ModelOpsResource, run_window
from model_ops.ops import deployment as dep
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import DeployAction

DEPLOY_CODE_VERSION = "deploy-1"

# The run-config values of DeployConfig.action: DeployAction's values as plain strings (sensors send
# ``str(action)``), a Literal so that Dagster checks them (a dropdown in the launchpad) before a run starts.
if TYPE_CHECKING:
    ActionName = str
else:
    ActionName = Literal[tuple(a.value for a in DeployAction)]


class DeployConfig(dg.Config):
    """What to change. ``deploy`` (default) starts the newest staging version: straight to production when
    nothing serves, else as a canary at the spec's first step. ``rollback`` without a version (or with the canary's)
    aborts a running canary; with no canary, or naming another version, it rolls production back (to that version).
    ``rollback_production`` always rolls production back."""

    action: ActionName = DeployAction.DEPLOY.value
    version: int | None = Field(default=None, description="Registry version to act on (default: per action).")
    reason: str | None = Field(default=None, description="Why; recorded in the audit log.")
    expect_serving: str | None = Field(
        default=None,
        description=(
            "Act only if production:canary is still this (e.g. '2:3', '-' for none); sensors set it so that a late "
            "run never acts on a deployment that changed after the decision."
        ),
    )


def manifest_metadata(manifest: dep.Manifest) -> dict[str, object]:
    """The versions serving, each only when there is one: an absent canary is no ``canary_version`` entry (a
    gap in its plot), never a made-up number."""
    roles = {"production": manifest.production, "canary": manifest.canary, "shadow": manifest.shadow}
    out: dict[str, object] = {f"{role}_version": number for role, number in roles.items() if number is not None}
    out["canary_weight"] = manifest.canary_weight
    out["manifest"] = dg.MetadataValue.json(manifest.to_dict())
    return out


def change_metadata(change: dep.Change, reason: str | None, window: str | None) -> dict[str, object]:
    """What a reader of the deployment history needs on each materialization: the action, the version it was
    about, the window (partition) whose evidence decided it, why, and what serves after it."""
    out: dict[str, object] = {"action": change.action, "changed": change.changed}
    if change.version is not None:
        out["version"] = change.version
    if window:
        out["window"] = window
    if reason:
        out["reason"] = reason
    out["message"] = change.message
    out["serving"] = change.after.describe()
    return {**out, **manifest_metadata(change.after)}


def deployment_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=key(spec, "deployment"),
        deps=[key(spec, "evaluation")],
        code_version=f"{DEPLOY_CODE_VERSION}-{spec.fingerprint('deployment')}",
        kinds={"deployment"},
        description="The deployment manifest: the production version, the canary version and its traffic weight, "
        "the shadow version. Each action (deploy, advance, promote, rollback, shadow_on, shadow_off) "
        "is a materialization with run config and a `deployment` record in the registry's audit log. "
        f"Canary steps: {', '.join(f'{s:.0%}' for s in spec.deployment.canary_steps)}.",
        **attribution(spec),
    )
    def _deployment(
        context: dg.AssetExecutionContext, config: DeployConfig, model_ops: ModelOpsResource
    ) -> dg.MaterializeResult:
        reg = model_ops.get_registry()
        staging = dep.staging_stage(reg)
        if (
            config.action == DeployAction.DEPLOY
            and config.version is None
            and not any(v.stage == staging for v in reg.versions(spec.name))
        ):
            manifest = dep.current(reg, spec.name)
            change = dep.Change(
                DeployAction.DEPLOY.value,
                manifest,
                manifest,
                f"no version is waiting in {staging}; {manifest.describe()} (unchanged)",
                False,
            )
        else:
            change = dep.apply(
                reg,
                spec,
                config.action,
                version=config.version,
                reason=config.reason,
                run_id=context.run.run_id,
                expect=config.expect_serving,
            )
        context.log.info(f"{spec.name}: {change.message}")
        window = run_window(context.run.tags)  # the window its sensor decided on (deployments have no partition)
        return dg.MaterializeResult(metadata=change_metadata(change, config.reason, window))

    return _deployment
