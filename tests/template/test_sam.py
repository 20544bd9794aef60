"""The SAM template: it validates with lint, builds for arm64, and grants each function only what
it uses."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAM = ROOT / ".tools" / "sam" / "bin" / "sam"


def search_path() -> str:
    """PATH as sam sees it: the project's venv first (make test puts it there too)."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def require_sam() -> None:
    """Fail, never skip: make test installs the SAM CLI, and a test that cannot run is a failure."""
    if not SAM.exists():
        pytest.fail(f"SAM CLI not installed at {SAM}: run `make test` (it installs it)", pytrace=False)


def require_python313() -> None:
    """sam build for the python3.13 runtime needs python3.13 on PATH: make test's venv is made from
    3.13 (pyenv's where there is one) and exposes it. Fail, never skip, where it does not."""
    if shutil.which("python3.13", path=search_path()) is None:
        pytest.fail(
            "python3.13 is not on PATH, so sam build cannot build the python3.13 runtime: make the venv "
            "from Python 3.13 (`rm -rf .venv && make test PYTHON=/path/to/python3.13`, or "
            "`pyenv install 3.13` first)",
            pytrace=False,
        )


def sam(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    require_sam()
    env = dict(os.environ, SAM_CLI_TELEMETRY="0")
    # sam build looks for python3.13 on PATH; the project's venv (Python 3.13 where pyenv has it) provides it.
    env["PATH"] = search_path()
    return subprocess.run(
        [str(SAM), *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_template_validates_with_lint():
    result = sam("validate", "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def _is_arm64(path: Path) -> bool:
    """Whether ``path`` is an ELF object for AArch64 (e_machine 183), as Lambda's arm64 runs."""
    header = path.read_bytes()[:20]
    return header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183


@pytest.mark.slow
def test_sam_build_packages_every_function_and_the_layer_for_arm64(tmp_path):
    require_python313()
    build_dir = tmp_path / "build"
    result = sam("build", "--build-dir", str(build_dir), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stdout + result.stderr
    layer = build_dir / "SharedLayer" / "python"
    assert (layer / "preheat" / "worker.py").exists()
    assert (layer / "aws_lambda_powertools").is_dir()
    assert (layer / "urllib3").is_dir()
    # The adapters speak HTTP through urllib3; requests stays out of the layer (and out of cold starts).
    assert not (layer / "requests").exists()
    # The runtime has the AWS SDK: the layer does not bundle it (aws-xray-sdk would pull botocore in).
    assert not [name for name in ("boto3", "botocore", "s3transfer") if (layer / name).exists()]
    assert (layer / "aws_xray_sdk").is_dir()
    native = list(layer.rglob("*.so"))
    assert native, "expected compiled wheels in the layer"
    assert not [path.name for path in native if not _is_arm64(path)]
    # gRPC has a layer of its own, for the worker and the check only: arm64 CPython 3.13 wheels.
    grpc_layer = build_dir / "GrpcLayer" / "python"
    for package in ("grpc", "grpc_health", "dragonfly_api", "google/protobuf"):
        assert (grpc_layer / package).is_dir(), package
    assert not (layer / "grpc").exists()
    grpc_native = list(grpc_layer.rglob("*.so"))
    assert grpc_native
    # Built for the functions' machine, whatever machine builds (an abi3 .so names no architecture).
    assert not [path.name for path in grpc_native if not _is_arm64(path)]
    # Every version-specific extension is CPython 3.13's (abi3 ones serve every 3.x).
    assert not [p.name for p in grpc_native if "cpython" in p.name and "cpython-313" not in p.name]
    for function in (
        "CheckFunction",
        "PreheatFunction",
        "StatusFunction",
        "LifecycleFunction",
        "WorkerFunction",
        "DeadLetterFunction",
        "ScheduledPreheatFunction",
        "SweeperFunction",
        "GateFunction",
        "ApiKeyAuthorizerFunction",
        "OpenApiFunction",
    ):
        assert (build_dir / function / "app.py").exists()
    # GET /api/openapi.json serves the document the layer ships.
    assert json.loads((layer / "preheat" / "openapi.json").read_text())["openapi"].startswith("3.")
    built = (build_dir / "template.yaml").read_text()
    assert "python3.13" in built
    assert "arm64" in built


# A Step Functions task token is answered by whichever function ends its task.
CALLBACKS = ("states:SendTaskSuccess", "states:SendTaskFailure")


def _policies(template: dict, function: str) -> list[dict]:
    """The function's policies, the granting branch of each conditional one (``!If [cond, policy,
    AWS::NoValue]``) included: a grant under a condition is still a grant."""
    from local.template import Fn

    policies = []
    for written in template["Resources"][function]["Properties"].get("Policies", []):
        policy = written.args[1] if isinstance(written, Fn) and written.name == "Fn::If" else written
        assert isinstance(policy, dict), policy
        policies.append(policy)
    return policies


def _policy_actions(template: dict, function: str) -> set[str]:
    actions: set[str] = set()
    for policy in _policies(template, function):
        for statement in policy.get("Statement", []):
            actions.update(statement["Action"])
        if "SQSSendMessagePolicy" in policy:
            actions.add("sqs:SendMessage")
    return actions


def test_each_function_is_granted_only_what_it_uses():
    from local.template import load_template

    template = load_template(ROOT / "template.yaml").raw
    # Reads, and writes back FAIL "timed out" for a task read past its deadline (announcing that
    # FAIL); lists through the index alone, signing its cursors with a key derived from the dedup key.
    assert _policy_actions(template, "StatusFunction") == {
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:Query",
        "secretsmanager:GetSecretValue",
        "events:PutEvents",
        *CALLBACKS,
    }
    status_statements = template["Resources"]["StatusFunction"]["Properties"]["Policies"][0]["Statement"]
    [query] = [s for s in status_statements if s["Action"] == ["dynamodb:Query"]]
    assert [resource.args for resource in query["Resource"]] == [
        "${TasksTable.Arn}/index/ListIndex",
        "${TasksTable.Arn}/index/StatusIndex",
    ]
    assert _policy_actions(template, "CheckFunction") == set()
    assert _policy_actions(template, "PreheatFunction") == {
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:GetItem",  # the task holding an identical request's claim
        "secretsmanager:GetSecretValue",  # the dedup key
        "sqs:SendMessage",
        "events:PutEvents",  # a task whose message could not be queued ends FAIL, announced
        *CALLBACKS,  # ... and answers its Step Functions token
    }
    assert _policy_actions(template, "WorkerFunction") == {
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "sqs:SendMessage",
        "sqs:ChangeMessageVisibility",  # a failed step's retry, after its backoff
        # Pulls from ECR with a token of its own, and registry credentials (or the Dragonfly 2 token)
        # from Secrets Manager when a secret is named.
        "ecr:GetAuthorizationToken",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "secretsmanager:GetSecretValue",
        "events:PutEvents",
        *CALLBACKS,
    }
    # Verify and evict: reads the task, stops a running one, records the eviction and announces it
    # (a stopped task's completion too); the Dragonfly 2 token when a secret is named.
    assert _policy_actions(template, "LifecycleFunction") == {
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "events:PutEvents",
        "secretsmanager:GetSecretValue",
        *CALLBACKS,  # a stopped task answers its Step Functions token
    }
    assert _policy_actions(template, "DeadLetterFunction") == {
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "events:PutEvents",
        *CALLBACKS,
    }
    # The sweeper finds overdue tasks through the listing index alone, reads and ends each one as a
    # status read does, announces it, and hands the announcement to the worker when PutEvents fails.
    assert _policy_actions(template, "SweeperFunction") == {
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:Query",
        "events:PutEvents",
        "sqs:SendMessage",
        *CALLBACKS,
        # Keep-warm checks verify and re-create through the driver (a Dragonfly 2 manager's token).
        "secretsmanager:GetSecretValue",
    }
    sweeper_statements = template["Resources"]["SweeperFunction"]["Properties"]["Policies"][0]["Statement"]
    [query] = [s for s in sweeper_statements if s["Action"] == ["dynamodb:Query"]]
    assert [resource.args for resource in query["Resource"]] == [
        "${TasksTable.Arn}/index/ListIndex",
        "${TasksTable.Arn}/index/KeepWarmIndex",
    ]
    # The gate reads the task (ending it, announced and answered, past its deadline) and verifies.
    assert _policy_actions(template, "GateFunction") == {
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "events:PutEvents",
        *CALLBACKS,
        "secretsmanager:GetSecretValue",
    }
    # The authorizer reads only the request (API Gateway holds and checks the keys); the OpenAPI
    # document is a file of the layer.
    assert _policy_actions(template, "ApiKeyAuthorizerFunction") == set()
    assert _policy_actions(template, "OpenApiFunction") == set()
    # Scheduled and ECR-push preheats submit through the same service as POST /api/preheat.
    assert _policy_actions(template, "ScheduledPreheatFunction") == _policy_actions(
        template, "PreheatFunction"
    )
    # Harbor's providers submit like POST /api/preheat (the Dragonfly 2 one also writes and reads its
    # job id aliases: PutItem/GetItem) and read like GET /api/preheat/{taskId}.
    for harbor in ("HarborDragonfly1Function", "HarborDragonfly2Function"):
        assert _policy_actions(template, harbor) == _policy_actions(template, "PreheatFunction")


def test_completion_events_may_go_to_the_configured_bus_only():
    from local.template import load_template

    template = load_template(ROOT / "template.yaml").raw
    granted = set()
    for function in template["Resources"]:
        if template["Resources"][function]["Type"] != "AWS::Serverless::Function":
            continue
        for policy in _policies(template, function):
            for statement in policy.get("Statement", []):
                if "events:PutEvents" in statement["Action"]:
                    assert statement["Action"] == ["events:PutEvents"]
                    assert statement["Resource"].args.endswith(":event-bus/${EventBusName}")
                    granted.add(function)
    # Every function that can end a task, and no other.
    assert granted == {
        "PreheatFunction",
        "StatusFunction",
        "LifecycleFunction",
        "WorkerFunction",
        "DeadLetterFunction",
        "ScheduledPreheatFunction",
        "SweeperFunction",
        "GateFunction",
        "HarborDragonfly1Function",
        "HarborDragonfly2Function",
    }
    assert template["Parameters"]["EventBusName"]["Default"] == "default"
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["PREHEAT_EVENT_BUS"].name == "EventBusName"
    # The SNS topic and its rule exist only when asked for; the rule matches exactly our events.
    for resource in ("TaskEventsTopic", "TaskEventsTopicPolicy", "TaskEventsRule"):
        assert template["Resources"][resource]["Condition"] == "CreateNotificationTopic"
    rule = template["Resources"]["TaskEventsRule"]["Properties"]
    assert rule["EventPattern"] == {"source": ["preheat"], "detail-type": ["Preheat Task Finished"]}
    assert rule["EventBusName"].name == "EventBusName"


def test_only_apis_without_resource_level_permissions_are_granted_on_every_resource():
    from local.template import load_template

    loaded = load_template(ROOT / "template.yaml")
    template = loaded.raw
    for function in loaded.functions:
        for policy in _policies(template, function):
            for statement in policy.get("Statement", []):
                if statement["Resource"] == "*":
                    # These APIs have no resource-level permissions (a task token has no ARN);
                    # everything else names its resources.
                    assert statement["Action"] in (["ecr:GetAuthorizationToken"], list(CALLBACKS)), statement


def test_secrets_are_granted_only_when_named_and_only_that_secret():
    from local.template import Fn, load_template

    template = load_template(ROOT / "template.yaml").raw
    worker = template["Resources"]["WorkerFunction"]["Properties"]
    grants = {}
    for policy in worker["Policies"]:
        if isinstance(policy, Fn):
            condition, granted, otherwise = policy.args
            assert otherwise.name == "AWS::NoValue"
            (statement,) = granted["Statement"]
            grants[condition] = statement
    expected = {
        "HasDragonfly2TokenSecret": ("Dragonfly2TokenSecretName", "PREHEAT_DRAGONFLY2_TOKEN_SECRET"),
        "HasRegistryCredentialsSecret": (
            "RegistryCredentialsSecretName",
            "PREHEAT_REGISTRY_CREDENTIALS_SECRET",
        ),
    }
    assert set(grants) == set(expected)
    for condition, (parameter, variable) in expected.items():
        assert grants[condition]["Action"] == ["secretsmanager:GetSecretValue"]
        # Secrets Manager appends "-" and 6 characters to a name: "-*" would also grant every
        # secret whose name merely starts with this one ("name-prod" for "name").
        assert grants[condition]["Resource"].args.endswith(f":secret:${{{parameter}}}-??????")
        assert worker["Environment"]["Variables"][variable].name == parameter
        assert template["Parameters"][parameter]["Default"] == ""


def test_queue_and_table_are_configured_for_production():
    from local.template import load_template

    resources = load_template(ROOT / "template.yaml").raw["Resources"]
    worker_timeout = resources["WorkerFunction"]["Properties"]["Timeout"]
    queue = resources["PreheatQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * worker_timeout
    assert queue["SqsManagedSseEnabled"] is True
    assert resources["PreheatDeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"] is True
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 3
    # The dead-letter consumer's queue too: a batch is never visible again while being worked.
    dead_letter_timeout = resources["DeadLetterFunction"]["Properties"].get(
        "Timeout", load_template(ROOT / "template.yaml").raw["Globals"]["Function"]["Timeout"]
    )
    assert resources["PreheatDeadLetterQueue"]["Properties"]["VisibilityTimeout"] >= 6 * dead_letter_timeout
    table = resources["TasksTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["SSESpecification"]["SSEEnabled"] is True
    worker_events = resources["WorkerFunction"]["Properties"]["Events"]["Steps"]["Properties"]
    assert worker_events["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # A burst of preheats must not flood registries and supernodes: a parameter bounds the workers.
    assert worker_events["ScalingConfig"]["MaximumConcurrency"].name == "WorkerMaxConcurrency"
    parameter = load_template(ROOT / "template.yaml").raw["Parameters"]["WorkerMaxConcurrency"]
    assert parameter["MinValue"] == 2  # Lambda's lowest MaximumConcurrency
    assert 2 <= parameter["Default"] <= 100


def test_samconfig_lints_on_validate_and_has_default_and_prod():
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for env in ("default", "prod"):
        assert config[env]["validate"]["parameters"]["lint"] is True
        assert config[env]["build"]["parameters"] == {"cached": True, "parallel": True}
        assert config[env]["deploy"]["parameters"]["resolve_s3"] is True
    json.dumps(config)  # plain data only


# -- access (AuthMode) ------------------------------------------------------------------------------

API_KEY_SECURITY = [{"ApiKeyAuthorizer": [], "api_key": []}]


def _resolver(auth_mode: str):
    from local.template import PhysicalResource, Resolver, load_template

    template = load_template(ROOT / "template.yaml")
    parameters = template.parameter_values({"Supernodes": "http://supernode:8002", "AuthMode": auth_mode})
    functions = {
        name: PhysicalResource(name, name, {"Arn": f"arn:aws:lambda:us-east-1:123456789012:function:{name}"})
        for name in template.functions
    }
    return template, Resolver(template, parameters, functions, "us-east-1", "123456789012")


def _api_routes(template) -> set[tuple[str, str]]:
    return {
        (event.path, event.method.lower())
        for function in template.functions.values()
        for event in function.api_events
        if event.rest_api_id == "PreheatApi"
    }


@pytest.mark.parametrize(
    ("auth_mode", "security"),
    [("API_KEY", API_KEY_SECURITY), ("IAM", [{"sigv4": []}]), ("NONE", [])],
)
def test_every_route_has_the_access_auth_mode_chooses(auth_mode: str, security: list):
    """Routes come from the functions' Api events; their security from PreheatApi's DefinitionBody. A
    route missing there would be merged in by SAM without any security: open whatever AuthMode says."""
    template, resolver = _resolver(auth_mode)
    api = template.resources["PreheatApi"]["Properties"]
    paths = api["DefinitionBody"]["paths"]
    routes = _api_routes(template)
    assert routes, "no Api events on PreheatApi"
    unlisted = sorted(route for route in routes if route[1] not in (paths.get(route[0]) or {}))
    assert not unlisted, f"add these routes to PreheatApi's DefinitionBody with the same security: {unlisted}"
    for path, method in routes:
        # The console page holds no data and a browser cannot send a key when it opens a page: it is
        # open in every mode, and its API calls carry the key to the routes checked here.
        expected = [] if (path, method) == ("/console", "get") else security
        assert resolver.resolve(paths[path][method]["security"]) == expected, (path, method)
    # Nothing in the body that no event serves (SAM would create a method without an integration).
    listed = {(path, method) for path, methods in paths.items() for method in methods}
    assert listed == routes
    definitions = resolver.resolve(api["DefinitionBody"]["securityDefinitions"])
    assert definitions["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert ("ApiKeyAuthorizer" in definitions) is (auth_mode == "API_KEY")


def test_api_key_mode_checks_keys_in_api_gateway_through_the_authorizer():
    from local.template import GetAtt, Ref

    template, resolver = _resolver("API_KEY")
    resources = template.resources
    api = resources["PreheatApi"]["Properties"]
    # API Gateway takes the key the authorizer found, and checks it against the usage plan itself.
    assert api["ApiKeySourceType"] == "AUTHORIZER"
    assert api["MergeDefinitions"] is True
    assert api["AlwaysDeploy"] is True  # a change of AuthMode alone must reach the stage
    authorizer = resolver.resolve(api["DefinitionBody"]["securityDefinitions"]["ApiKeyAuthorizer"])
    lambda_authorizer = authorizer["x-amazon-apigateway-authorizer"]
    assert lambda_authorizer["type"] == "request"
    # Either header may carry the key: with a cache, API Gateway refuses requests lacking an identity source.
    assert lambda_authorizer["authorizerResultTtlInSeconds"] == 0
    assert "identitySource" not in lambda_authorizer
    uri = template.resources["PreheatApi"]["Properties"]["DefinitionBody"]["securityDefinitions"][
        "ApiKeyAuthorizer"
    ].args[1]["x-amazon-apigateway-authorizer"]["authorizerUri"]
    assert "${ApiKeyAuthorizerFunction.Arn}" in uri.args
    assert api["DefinitionBody"]["securityDefinitions"]["api_key"] == {
        "type": "apiKey",
        "name": "x-api-key",
        "in": "header",
    }

    plan = resources["ApiUsagePlan"]["Properties"]
    assert plan["ApiStages"] == [{"ApiId": Ref("PreheatApi"), "Stage": Ref("PreheatApi.Stage")}]
    assert plan["Throttle"] == {"RateLimit": Ref("ApiRateLimit"), "BurstLimit": Ref("ApiBurstLimit")}
    key = resources["ApiKey"]["Properties"]
    assert key["Enabled"] is True
    assert key["Value"].args == "{{resolve:secretsmanager:${ApiKeySecret}:SecretString}}"
    assert resources["ApiUsagePlanKey"]["Properties"] == {
        "KeyId": Ref("ApiKey"),
        "KeyType": "API_KEY",
        "UsagePlanId": Ref("ApiUsagePlan"),
    }
    permission = resources["ApiKeyAuthorizerPermission"]["Properties"]
    assert permission["Principal"] == "apigateway.amazonaws.com"
    assert permission["FunctionName"] == GetAtt("ApiKeyAuthorizerFunction", "Arn")
    assert permission["SourceArn"].args.endswith(":${PreheatApi}/authorizers/*")
    # API Gateway keys are 20 to 128 characters.
    generated = resources["ApiKeySecret"]["Properties"]["GenerateSecretString"]
    assert 20 <= generated["PasswordLength"] <= 128
    assert generated["ExcludePunctuation"] is True


def test_only_api_key_mode_creates_the_key_its_plan_and_the_authorizer():
    from local.template import load_template

    raw = load_template(ROOT / "template.yaml").raw
    conditional = {
        "ApiKeyAuthorizerFunction",
        "ApiKeyAuthorizerPermission",
        "ApiKeyAuthorizerLogGroup",
        "ApiKeySecret",
        "ApiKey",
        "ApiUsagePlan",
        "ApiUsagePlanKey",
    }
    for logical_id in conditional:
        assert raw["Resources"][logical_id]["Condition"] == "AuthApiKey", logical_id
    assert raw["Parameters"]["AuthMode"]["Default"] == "API_KEY"
    assert raw["Parameters"]["AuthMode"]["AllowedValues"] == ["API_KEY", "IAM", "NONE"]
    for output in ("ApiKeyId", "ApiKeySecretArn", "ApiKeyCommand"):
        assert raw["Outputs"][output]["Condition"] == "AuthApiKey"
    command = raw["Outputs"]["ApiKeyCommand"]["Value"].args
    assert command.startswith("aws secretsmanager get-secret-value ")
    assert "--secret-id ${ApiKeySecret}" in command
    assert "--query SecretString --output text" in command


def test_only_the_worker_and_the_check_carry_the_grpc_layer():
    """The Dragonfly 2 scheduler target's gRPC runtime is a layer of its own, added to the shared
    one by the functions that talk to schedulers (the worker, the check, verify/evict, the gate, and
    the sweeper's keep-warm checks); the others neither carry nor load it."""
    from local.template import Ref, Template, load_template

    template = Template.load(ROOT / "template.yaml")
    carrying = {
        logical_id
        for logical_id, spec in template.functions.items()
        if any(isinstance(layer, Ref) and layer.name == "GrpcLayer" for layer in spec.layers)
    }
    assert carrying == {
        "WorkerFunction",
        "CheckFunction",
        "LifecycleFunction",
        "GateFunction",
        "SweeperFunction",
    }
    for logical_id in carrying:
        assert [layer.name for layer in template.functions[logical_id].layers] == ["SharedLayer", "GrpcLayer"]
    raw = load_template(ROOT / "template.yaml").raw
    assert raw["Resources"]["GrpcLayer"]["Metadata"] == {
        "BuildMethod": "makefile",
        "BuildArchitecture": "arm64",
    }
    assert raw["Parameters"]["SupernodeApi"]["AllowedValues"] == [
        "dragonfly1",
        "dragonfly2",
        "dragonfly2-scheduler",
    ]
    assert raw["Parameters"]["Dragonfly2TaskIds"]["AllowedValues"] == ["url", "blob-digest"]
    worker_env = raw["Resources"]["WorkerFunction"]["Properties"]["Environment"]["Variables"]
    assert worker_env["PREHEAT_DRAGONFLY2_TASK_IDS"].name == "Dragonfly2TaskIds"
