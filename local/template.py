"""Typed, read-only views of the SAM template: the one source the local stack is built from.

Everything local (tables, queues, routes, queue pollers, each function's environment) is derived from
``template.yaml`` through this module, so the local stack cannot drift from what gets deployed.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FUNCTION_TYPE = "AWS::Serverless::Function"
TABLE_TYPE = "AWS::DynamoDB::Table"
QUEUE_TYPE = "AWS::SQS::Queue"
LAYER_TYPE = "AWS::Serverless::LayerVersion"
API_TYPE = "AWS::Serverless::Api"

# SAM's defaults when neither Globals nor the function set a value.
_DEFAULT_TIMEOUT = 3
_DEFAULT_MEMORY = 128
# The stage SAM gives the implicit API (events without a RestApiId).
_IMPLICIT_API_STAGE = "Prod"
# Parameters a deploy must choose (no Default in the template), with the choice local runs make when
# not told otherwise: everything local is on loopback, and any registry may be named there.
LOCAL_CHOICES = {"AllowedRegistries": "*"}


class TemplateError(ValueError):
    """The template says something this module cannot turn into a local value."""


# --- intrinsic functions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    name: str


@dataclass(frozen=True)
class GetAtt:
    resource: str
    attribute: str


@dataclass(frozen=True)
class Fn:
    """Any other intrinsic, by its long name (``Fn::Sub``, ``Fn::If``, ``Condition``...)."""

    name: str
    args: Any


Intrinsic = Ref | GetAtt | Fn


def _getatt(args: Any) -> GetAtt:
    if isinstance(args, str):
        resource, _, attribute = args.partition(".")
    elif isinstance(args, list) and len(args) == 2:
        resource, attribute = args
    else:
        raise TemplateError(f"malformed GetAtt: {args!r}")
    if not resource or not attribute:
        raise TemplateError(f"malformed GetAtt: {args!r}")
    return GetAtt(str(resource), str(attribute))


def _intrinsic(name: str, args: Any) -> Intrinsic:
    if name == "Ref":
        return Ref(str(args))
    if name == "Fn::GetAtt":
        return _getatt(args)
    return Fn(name, args)


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """SafeLoader plus the CloudFormation short tags (``!Ref``, ``!GetAtt``, ``!Sub``...)."""


# CloudFormation reads scalars as strings: a bare 2010-09-09 must not become a datetime.date.
_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_tag(loader: _Loader, suffix: str, node: yaml.Node) -> Intrinsic:
    args: Any
    if isinstance(node, yaml.ScalarNode):
        args = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        args = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - yaml has no other node kinds
        raise TemplateError(f"unsupported node for !{suffix}")
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    return _intrinsic(name, args)


_Loader.add_multi_constructor("!", _construct_tag)


def _normalize(value: Any) -> Any:
    """Turn long-form intrinsics (``{"Ref": ...}``, ``{"Fn::Sub": ...}``) into the same objects as tags."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, args),) = value.items()
            if key == "Ref" or (isinstance(key, str) and key.startswith("Fn::")):
                return _intrinsic(key, _normalize(args))
        return {key: _normalize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        document = yaml.load(stream, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    if not isinstance(document, dict):
        raise TemplateError(f"{path} is not a mapping")
    normalized = _normalize(document)
    assert isinstance(normalized, dict)
    return normalized


# --- typed views -----------------------------------------------------------------------------------


def _as_str(value: Any) -> str:
    """A template scalar as CloudFormation stringifies it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: str | None
    allowed_values: tuple[str, ...] = ()
    allowed_pattern: str | None = None
    min_value: float | None = None
    max_value: float | None = None

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any]) -> Parameter:
        default = raw.get("Default")
        return cls(
            name=name,
            type=str(raw.get("Type", "String")),
            default=None if default is None else _as_str(default),
            allowed_values=tuple(_as_str(v) for v in raw.get("AllowedValues", ())),
            allowed_pattern=raw.get("AllowedPattern"),
            min_value=None if raw.get("MinValue") is None else float(raw["MinValue"]),
            max_value=None if raw.get("MaxValue") is None else float(raw["MaxValue"]),
        )

    def validate(self, value: str) -> None:
        """Refuse what CloudFormation would refuse at deploy time, so local runs fail the same way."""
        if self.allowed_values and value not in self.allowed_values:
            raise TemplateError(f"parameter {self.name}={value!r} is not one of {self.allowed_values}")
        if self.allowed_pattern is not None and not re.fullmatch(self.allowed_pattern, value):
            raise TemplateError(f"parameter {self.name}={value!r} does not match {self.allowed_pattern}")
        if self.type == "Number":
            try:
                number = float(value)
            except ValueError:
                raise TemplateError(f"parameter {self.name}={value!r} is not a number") from None
            if self.min_value is not None and number < self.min_value:
                raise TemplateError(f"parameter {self.name}={value} is below {self.min_value:g}")
            if self.max_value is not None and number > self.max_value:
                raise TemplateError(f"parameter {self.name}={value} is above {self.max_value:g}")


@dataclass(frozen=True)
class ApiEvent:
    name: str
    path: str
    method: str  # upper case; ANY matches every method
    rest_api_id: str | None  # logical id of the AWS::Serverless::Api, None for the implicit API


@dataclass(frozen=True)
class SqsEvent:
    name: str
    queue: str  # logical id of the AWS::SQS::Queue
    batch_size: int
    function_response_types: tuple[str, ...]
    enabled: bool = True

    @property
    def report_batch_item_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.function_response_types


Event = ApiEvent | SqsEvent


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_uri: Path
    handler: str
    environment: Mapping[str, Any]  # unresolved values: Globals merged with the function's own
    timeout: int
    memory_size: int
    layers: tuple[Any, ...]
    events: tuple[Event, ...]

    @property
    def handler_file(self) -> Path:
        module, _, _ = self.handler.rpartition(".")
        return self.code_uri / (module.replace(".", "/") + ".py")

    @property
    def handler_name(self) -> str:
        return self.handler.rpartition(".")[2]

    @property
    def api_events(self) -> tuple[ApiEvent, ...]:
        return tuple(e for e in self.events if isinstance(e, ApiEvent))

    @property
    def sqs_events(self) -> tuple[SqsEvent, ...]:
        return tuple(e for e in self.events if isinstance(e, SqsEvent))


@dataclass(frozen=True)
class TableSpec:
    logical_id: str
    properties: Mapping[str, Any]


@dataclass(frozen=True)
class QueueSpec:
    logical_id: str
    properties: Mapping[str, Any]

    @property
    def dead_letter_queue(self) -> str | None:
        """Logical id of the queue the RedrivePolicy sends to, if it names one of the template's queues."""
        target = (self.properties.get("RedrivePolicy") or {}).get("deadLetterTargetArn")
        if isinstance(target, GetAtt) and target.attribute == "Arn":
            return target.resource
        return None

    @property
    def max_receive_count(self) -> int | None:
        count = (self.properties.get("RedrivePolicy") or {}).get("maxReceiveCount")
        return None if count is None else int(count)


@dataclass(frozen=True)
class LayerSpec:
    logical_id: str
    content_uri: Path


@dataclass(frozen=True)
class ApiSpec:
    logical_id: str
    stage_name: Any  # unresolved (usually !Ref StageName)


def _merge_globals(global_props: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """SAM's Globals rule: the function's value wins, except Environment.Variables are merged key by
    key and Layers are added to the Globals' (which come first)."""
    merged = {**global_props, **own}
    if "Layers" in global_props and "Layers" in own:
        merged["Layers"] = [*global_props["Layers"], *own["Layers"]]
    global_vars = ((global_props.get("Environment") or {}).get("Variables")) or {}
    own_vars = ((own.get("Environment") or {}).get("Variables")) or {}
    if global_vars or own_vars:
        merged["Environment"] = {"Variables": {**global_vars, **own_vars}}
    return merged


def _parse_event(name: str, raw: Mapping[str, Any]) -> Event | None:
    props = raw.get("Properties") or {}
    kind = raw.get("Type")
    if kind == "Api":
        rest_api = props.get("RestApiId")
        if rest_api is not None and not isinstance(rest_api, Ref):
            raise TemplateError(f"event {name}: RestApiId must be a !Ref to an Api in this template")
        return ApiEvent(
            name=name,
            path=str(props["Path"]),
            method=str(props["Method"]).upper(),
            rest_api_id=None if rest_api is None else rest_api.name,
        )
    if kind == "SQS":
        queue = props["Queue"]
        if not (isinstance(queue, GetAtt) and queue.attribute == "Arn"):
            raise TemplateError(
                f"event {name}: Queue must be !GetAtt <Queue>.Arn of a queue in this template"
            )
        return SqsEvent(
            name=name,
            queue=queue.resource,
            batch_size=int(props.get("BatchSize", 10)),
            function_response_types=tuple(props.get("FunctionResponseTypes") or ()),
            enabled=bool(props.get("Enabled", True)),
        )
    # Other event sources (Schedule, S3...) have no local stand-in yet; they are simply not wired.
    return None


@dataclass(frozen=True)
class Template:
    path: Path
    raw: Mapping[str, Any]
    parameters: Mapping[str, Parameter] = field(default_factory=dict)
    functions: Mapping[str, FunctionSpec] = field(default_factory=dict)
    tables: Mapping[str, TableSpec] = field(default_factory=dict)
    queues: Mapping[str, QueueSpec] = field(default_factory=dict)
    layers: Mapping[str, LayerSpec] = field(default_factory=dict)
    apis: Mapping[str, ApiSpec] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def resources(self) -> Mapping[str, Mapping[str, Any]]:
        return self.raw.get("Resources") or {}

    def resource_type(self, logical_id: str) -> str | None:
        resource = self.resources.get(logical_id)
        return None if resource is None else str(resource.get("Type"))

    @classmethod
    def load(cls, path: str | Path) -> Template:
        path = Path(path).resolve()
        raw = load_yaml(path)
        root = path.parent
        global_props = ((raw.get("Globals") or {}).get("Function")) or {}

        functions: dict[str, FunctionSpec] = {}
        tables: dict[str, TableSpec] = {}
        queues: dict[str, QueueSpec] = {}
        layers: dict[str, LayerSpec] = {}
        apis: dict[str, ApiSpec] = {}
        for logical_id, resource in (raw.get("Resources") or {}).items():
            kind = resource.get("Type")
            props = resource.get("Properties") or {}
            if kind == FUNCTION_TYPE:
                merged = _merge_globals(global_props, props)
                events = (_parse_event(n, e) for n, e in (merged.get("Events") or {}).items())
                functions[logical_id] = FunctionSpec(
                    logical_id=logical_id,
                    code_uri=(root / str(merged["CodeUri"])).resolve(),
                    handler=str(merged["Handler"]),
                    environment=dict((merged.get("Environment") or {}).get("Variables") or {}),
                    timeout=int(merged.get("Timeout", _DEFAULT_TIMEOUT)),
                    memory_size=int(merged.get("MemorySize", _DEFAULT_MEMORY)),
                    layers=tuple(merged.get("Layers") or ()),
                    events=tuple(e for e in events if e is not None),
                )
            elif kind == TABLE_TYPE:
                tables[logical_id] = TableSpec(logical_id, props)
            elif kind == QUEUE_TYPE:
                queues[logical_id] = QueueSpec(logical_id, props)
            elif kind == LAYER_TYPE and isinstance(props.get("ContentUri"), str):
                layers[logical_id] = LayerSpec(logical_id, (root / props["ContentUri"]).resolve())
            elif kind == API_TYPE:
                apis[logical_id] = ApiSpec(logical_id, props.get("StageName"))
        parameters = {
            name: Parameter.parse(name, spec) for name, spec in (raw.get("Parameters") or {}).items()
        }
        return cls(path, raw, parameters, functions, tables, queues, layers, apis)

    def parameter_values(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """Defaults overlaid with ``overrides``, validated like a deploy would; no-default parameters
        without an override take their :data:`LOCAL_CHOICES` value, or stay absent (resolving a
        reference to one then fails with its name)."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(self.parameters)
        if unknown:
            raise TemplateError(f"unknown template parameters: {sorted(unknown)}")
        values: dict[str, str] = {}
        for name, parameter in self.parameters.items():
            default = parameter.default if parameter.default is not None else LOCAL_CHOICES.get(name)
            value = overrides.get(name, default)
            if value is not None:
                parameter.validate(value)
                values[name] = value
        return values

    def layer_dirs(self, function: FunctionSpec) -> tuple[Path, ...]:
        """Source directories of the function's layers that this template builds (``!Ref <Layer>``)."""
        return tuple(
            self.layers[layer.name].content_uri
            for layer in function.layers
            if isinstance(layer, Ref) and layer.name in self.layers
        )

    def api_stage(self, event: ApiEvent, resolver: Resolver) -> str:
        if event.rest_api_id is None:
            return _IMPLICIT_API_STAGE
        api = self.apis.get(event.rest_api_id)
        if api is None:
            raise TemplateError(f"event {event.name}: {event.rest_api_id} is not an Api of this template")
        return _as_str(resolver.resolve(api.stage_name))


# --- resolving intrinsics to local values -------------------------------------------------------------


@dataclass(frozen=True)
class PhysicalResource:
    """What ``!Ref`` and ``!GetAtt`` of one resource give locally."""

    logical_id: str
    ref: str
    attributes: Mapping[str, str] = field(default_factory=dict)


class _NoValue:
    """``AWS::NoValue``: the property (or variable) is dropped."""


NO_VALUE = _NoValue()


@dataclass
class Resolver:
    template: Template
    parameters: Mapping[str, str]
    resources: Mapping[str, PhysicalResource]
    region: str
    account_id: str
    stack_name: str = "preheat-local"

    def _pseudo(self, name: str) -> str | _NoValue | None:
        stack_id = f"arn:aws:cloudformation:{self.region}:{self.account_id}:stack/{self.stack_name}/local"
        pseudo: dict[str, str | _NoValue] = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": self.stack_name,
            "AWS::StackId": stack_id,
            "AWS::NoValue": NO_VALUE,
        }
        return pseudo.get(name)

    def ref(self, name: str) -> Any:
        pseudo = self._pseudo(name)
        if pseudo is not None:
            return pseudo
        if name in self.template.parameters:
            if name not in self.parameters:
                raise TemplateError(f"parameter {name} has no default and no local value was given")
            return self.parameters[name]
        if name in self.resources:
            return self.resources[name].ref
        kind = self.template.resource_type(name)
        raise TemplateError(
            f"!Ref {name}: " + (f"no local value for this {kind}" if kind else "not in the template")
        )

    def getatt(self, resource: str, attribute: str) -> str:
        physical = self.resources.get(resource)
        if physical is None or attribute not in physical.attributes:
            raise TemplateError(f"!GetAtt {resource}.{attribute}: no local value")
        return physical.attributes[attribute]

    def condition(self, name: str) -> bool:
        conditions = self.template.raw.get("Conditions") or {}
        if name not in conditions:
            raise TemplateError(f"unknown condition {name}")
        return self._truth(conditions[name])

    def _truth(self, value: Any) -> bool:
        if isinstance(value, Fn):
            args = value.args
            if value.name == "Fn::Equals":
                left, right = (self.resolve(a) for a in args)
                return _as_str(left) == _as_str(right)
            if value.name == "Fn::Not":
                return not self._truth(args[0])
            if value.name == "Fn::And":
                return all(self._truth(a) for a in args)
            if value.name == "Fn::Or":
                return any(self._truth(a) for a in args)
            if value.name == "Condition":
                return self.condition(str(args))
        if isinstance(value, dict) and set(value) == {"Condition"}:
            return self.condition(str(value["Condition"]))
        raise TemplateError(f"not a condition: {value!r}")

    def _sub(self, args: Any) -> str:
        text, variables = (args, {}) if isinstance(args, str) else (args[0], args[1])

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return _as_str(self.resolve(variables[name]))
            if "." in name and name.split(".", 1)[0] in self.template.resources:
                return self.getatt(*name.split(".", 1))
            return _as_str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic replaced by its local value (``NO_VALUE`` items dropped)."""
        if isinstance(value, Ref):
            return self.ref(value.name)
        if isinstance(value, GetAtt):
            return self.getatt(value.resource, value.attribute)
        if isinstance(value, Fn):
            return self._fn(value)
        if isinstance(value, dict):
            resolved = {k: self.resolve(v) for k, v in value.items()}
            return {k: v for k, v in resolved.items() if v is not NO_VALUE}
        if isinstance(value, list):
            return [v for v in (self.resolve(item) for item in value) if v is not NO_VALUE]
        return value

    def _fn(self, fn: Fn) -> Any:  # noqa: PLR0911 - one return per intrinsic reads best
        args = fn.args
        if fn.name == "Fn::Sub":
            return self._sub(args)
        if fn.name == "Fn::Join":
            return _as_str(args[0]).join(_as_str(v) for v in self.resolve(args[1]))
        if fn.name == "Fn::If":
            return self.resolve(args[1] if self.condition(str(args[0])) else args[2])
        if fn.name == "Fn::Select":
            return self.resolve(args[1])[int(self.resolve(args[0]))]
        if fn.name == "Fn::Split":
            return _as_str(self.resolve(args[1])).split(_as_str(args[0]))
        if fn.name == "Fn::Base64":
            return base64.b64encode(_as_str(self.resolve(args)).encode()).decode()
        if fn.name == "Fn::FindInMap":
            mapping, top, second = (_as_str(self.resolve(a)) for a in args[:3])
            return (self.template.raw.get("Mappings") or {})[mapping][top][second]
        if fn.name == "Fn::ToJsonString":
            return json.dumps(self.resolve(args), separators=(",", ":"))
        raise TemplateError(f"{fn.name} has no local evaluation")

    def resolve_str(self, value: Any) -> str | None:
        """A resolved scalar as an environment variable's string (None for ``AWS::NoValue``)."""
        resolved = self.resolve(value)
        if resolved is NO_VALUE:
            return None
        if isinstance(resolved, (dict, list)):
            raise TemplateError(f"{value!r} does not resolve to a scalar")
        return _as_str(resolved)


def load_template(path: str | Path) -> Template:
    """The template at ``path`` (``Template.load``)."""
    return Template.load(path)
