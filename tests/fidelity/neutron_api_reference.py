"""Neutron's own answers to the API requests the lab's Neutron API serves, as a JSON filter.

The lab's API (chaos.lab.neutron_api) must refuse what neutron-server refuses and hide what it
hides. This script is the Neutron side of that comparison: it loads Neutron 29's API
extensions (``neutron.api.extensions.ExtensionManager`` over ``neutron/extensions``, reduced
to the aliases the lab advertises, then ``extend_resources`` as the API router does), and runs
Neutron's own request code on the lab's requests and resources:

- list filters: ``neutron.pecan_wsgi.hooks.query_parameters._set_filters`` (the skipped keys,
  ``get_filters_from_dict`` with filter validation on, as the ``filter-validation`` extension
  turns it on, and the attributes' value converters), its 400 turned into a body by
  ``api_common.convert_exception_to_http_exc``;
- policy: ``neutron.policy`` with Neutron's default rules, and the pecan ``PolicyHook.after``
  that hides the items a caller may not see and strips the attributes it may not read (also,
  for every caller, attributes no loaded extension declares visible);
- the legacy l3 scheduler controllers' ``policy.enforce`` on ``get_l3-agents`` and friends,
  and the body their ``PolicyNotAuthorized`` becomes.

Nothing here re-implements Neutron. It runs under ``.venv-neutron/bin/python`` (never the
project's interpreter); ``tests/fidelity/reference.py`` is the caller.

Input (one JSON document on stdin)::

    {"extensions": ["router", "l3-ha", ...],          # aliases the lab advertises
     "collections": {"routers": "router", ...},       # collection -> resource (member) name
     "queries": [{"collection": "routers", "params": [["ha", "True"], ["name", "x"]]}],
     "callers": {"admin": {"project_id": "..", "roles": ["admin", "member", "reader"]},
                 "member": {"project_id": "..", "roles": ["member", "reader"]}},
     "items": {"routers": [{...}, ...], ...},         # every item as the lab shows it to admin
     "rules": ["get_l3-agents", ...]}                 # rules enforced with an empty target

``items["networks"]`` also answers the ``network:tenant_id`` look-ups of the port rules (the
core plugin's ``get_network``, stubbed with the lab's networks).

Output (one JSON document on stdout)::

    {"neutron_version": "29.0.0",
     "filters": {collection: [attribute, ...]},       # is_filter after populate_project_info
     "model_base_attributes": [name, ...],            # public names of model_base.BASEV2
     "converters": {collection: {attribute: name}},   # convert_to / convert_list_to of the filters
     "visible": {collection: [attribute, ...]},       # is_visible
     "queries": [{"status": 200, "filters": {...}} | {"status": 400, "body": {...}}],
     "views": {caller: {collection: {"list": [item, ...], "show": [{"status", "body"}, ...]}}},
     "rules": {caller: {rule: {"status": 200} | {"status": 403, "body": {...}}}}}

``views[caller][collection]["list"]`` is what ``GET /v2.0/<collection>`` answers that caller
(hidden items left out, attributes stripped); ``show`` has, per input item, what
``GET /v2.0/<collection>/<id>`` answers.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import sys
import warnings
from types import SimpleNamespace
from typing import Any

warnings.simplefilter("ignore")


def main() -> None:
    doc = json.load(sys.stdin)

    from oslo_config import cfg

    cfg.CONF([], project="neutron")
    import webob
    import webob.exc
    from neutron_lib import context as n_context
    from neutron_lib import exceptions as n_exc
    from neutron_lib.api import attributes, faults
    from neutron_lib.db import model_base
    from neutron_lib.plugins import constants as plugin_constants
    from neutron_lib.plugins import directory
    from oslo_policy import policy as oslo_policy

    import neutron.extensions
    from neutron import policy
    from neutron.api import api_common, extensions
    from neutron.pecan_wsgi.controllers import utils as controller_utils
    from neutron.pecan_wsgi.hooks import policy_enforcement, query_parameters

    # The API router's extension set: every extension of neutron/extensions, then only the
    # aliases the lab advertises (what its plugins would have loaded), extended as Neutron does.
    manager = extensions.ExtensionManager(os.path.dirname(neutron.extensions.__file__))
    advertised = set(doc["extensions"])
    unknown = advertised - set(manager.extensions)
    if unknown:
        raise SystemExit(f"extensions unknown to Neutron 29: {sorted(unknown)}")
    manager.extensions = {alias: ext for alias, ext in manager.extensions.items() if alias in advertised}
    # In place, as the API router does: policy checks such as rule:external convert their
    # values with the attribute map they find there.
    attr_map = attributes.RESOURCES
    manager.extend_resources("2.0", attr_map)
    # is_filter_validation_enabled() and is_empty_string_filtering_supported() ask the
    # plugin-aware manager which extensions are loaded: the same reduced set.
    extensions.PluginAwareExtensionManager._instance = manager

    networks = {n["id"]: n for n in doc["items"].get("networks", [])}

    class Plugin:
        """The core plugin, as far as the requests here reach it."""

        filter_validation_support = True

        def get_network(self, context: Any, network_id: str, fields: Any = None) -> dict[str, Any]:
            return networks[network_id]

    plugin = Plugin()
    directory.add_plugin(plugin_constants.CORE, plugin)
    policy.init()

    controllers = {}
    for collection, resource in doc["collections"].items():
        info = attr_map.get(collection, {})
        attributes.populate_project_info(info)
        controllers[collection] = controller_utils.NeutronPecanController(
            collection, resource, plugin=plugin, resource_info=info)

    out: dict[str, Any] = {
        "neutron_version": importlib.metadata.version("neutron"),
        "filters": {c: sorted(k for k, v in ctl.resource_info.items() if v.get("is_filter"))
                    for c, ctl in controllers.items()},
        "converters": {
            c: {k: (v.get("convert_list_to") or v.get("convert_to")).__name__
                for k, v in ctl.resource_info.items()
                if v.get("is_filter") and (v.get("convert_list_to") or v.get("convert_to"))}
            for c, ctl in controllers.items()
        },
        # get_filters_from_dict skips any key for which hasattr(model_base.BASEV2, key) holds.
        "model_base_attributes": sorted(n for n in dir(model_base.BASEV2) if not n.startswith("_")),
        "visible": {c: sorted(k for k, v in ctl.resource_info.items() if v.get("is_visible"))
                    for c, ctl in controllers.items()},
        "queries": [],
        "views": {},
        "rules": {},
    }

    def body_of(exc: Exception) -> dict[str, Any]:
        http = api_common.convert_exception_to_http_exc(exc, faults.FAULT_MAP, None)
        return {"status": http.code, "body": json.loads(http.body)}

    # ---------------------------------------------------------------- list filters
    for query in doc["queries"]:
        params = webob.multidict.MultiDict(query["params"])
        state = SimpleNamespace(request=SimpleNamespace(params=params))
        try:
            filters = query_parameters._set_filters(state, controllers[query["collection"]])
        except (webob.exc.HTTPException, n_exc.NeutronException) as exc:  # an invalid key or value
            out["queries"].append(body_of(exc))
        else:
            out["queries"].append({"status": 200, "filters": {k: [str(v) for v in vs] for k, vs in filters.items()}})

    # ---------------------------------------------------------------- policy
    def after(ctx: Any, collection: str, method: str, data: dict[str, Any]) -> dict[str, Any]:
        controller = controllers[collection]
        response = webob.Response(json=data, content_type="application/json")
        state = SimpleNamespace(
            request=SimpleNamespace(method=method, context={
                "neutron_context": ctx, "resource": controller.resource, "collection": collection}),
            response=response,
            arguments=SimpleNamespace(args=[controller]),
        )
        policy_enforcement.PolicyHook().after(state)
        return {"status": response.status_code, "body": json.loads(response.text)}

    for name, caller in doc["callers"].items():
        ctx = n_context.Context(user_id=name, project_id=caller["project_id"], roles=caller["roles"])
        views: dict[str, Any] = {}
        for collection, items in doc["items"].items():
            resource = controllers[collection].resource
            listed = after(ctx, collection, "GET", {collection: copy.deepcopy(items)})
            shown = [after(ctx, collection, "GET", {resource: copy.deepcopy(item)}) for item in items]
            views[collection] = {"list": listed["body"][collection], "show": shown}
        out["views"][name] = views
        rules: dict[str, Any] = {}
        for rule in doc["rules"]:
            try:
                policy.enforce(ctx, rule, {})
            except oslo_policy.PolicyNotAuthorized as exc:
                rules[rule] = body_of(exc)
            else:
                rules[rule] = {"status": 200}
        out["rules"][name] = rules

    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()
