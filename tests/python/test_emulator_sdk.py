"""The ARM/NRP emulator driven by a stock Azure client: azure-mgmt-network (api-version
2025-05-01) running its ordinary calls, unmodified, against the emulator's HTTP face.

Run by tests/tests/emulator_python_sdk.rs, which starts two emulators on loopback and passes:

  EMULATOR_SYNC_URL       an emulator answering at once (production-like)
  EMULATOR_POLLING_URL    an emulator answering writes as long-running operations
  EMULATOR_SUBSCRIPTION, EMULATOR_RESOURCE_GROUP, EMULATOR_LOCATION   the resource group both serve
  EMULATOR_OTHER_SUBSCRIPTION, EMULATOR_OTHER_RESOURCE_GROUP          a second one (polling emulator)
  EMULATOR_TOKEN          the only bearer token both accept

The only thing not stock is the bearer policy: the SDK's own ARM policy, told that sending the
token over plain http:// is fine (the emulator listens on loopback without TLS).
"""

import os
import time

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy
from azure.mgmt.core.polling.arm_polling import ARMPolling
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network.models import (
    BackendAddressPool,
    FrontendIPConfiguration,
    LoadBalancer,
    LoadBalancerSku,
    LoadBalancingRule,
    NatGateway,
    NatGatewaySku,
    PublicIPAddress,
    PublicIPAddressSku,
    ServiceGatewayAddress,
    ServiceGatewayAddressLocation,
    ServiceGatewayService,
    ServiceGatewayServiceRequest,
    ServiceGatewayUpdateAddressLocationsRequest,
    ServiceGatewayUpdateServicesRequest,
    SubResource,
)

ENV = os.environ
SUB = ENV.get("EMULATOR_SUBSCRIPTION", "")
RG = ENV.get("EMULATOR_RESOURCE_GROUP", "")
LOCATION = ENV.get("EMULATOR_LOCATION", "")
TOKEN = ENV.get("EMULATOR_TOKEN", "")
URLS = {"sync": ENV.get("EMULATOR_SYNC_URL", ""), "polling": ENV.get("EMULATOR_POLLING_URL", "")}
SGW = "servicegateway"
API_VERSION = "2025-05-01"

if not (SUB and RG and LOCATION and TOKEN and URLS["sync"] and URLS["polling"]):
    raise RuntimeError("run through tests/tests/emulator_python_sdk.rs: the EMULATOR_* variables are not set")


class StaticToken:
    """A TokenCredential with one fixed token."""

    def __init__(self, token):
        self._token = token

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self._token, int(time.time()) + 3600)


class PlainHttpBearerPolicy(ARMChallengeAuthenticationPolicy):
    """The SDK's ARM bearer policy, allowed to send its token to an http:// URL (it refuses by
    default)."""

    def on_request(self, request):
        request.context["enforce_https"] = False
        super().on_request(request)


class Paused(ARMPolling):
    """The SDK's ARM poller, initialised from the first answer but not run: its continuation
    token resumes the operation with the ordinary poller later."""

    def run(self):
        pass


def client(mode, token=TOKEN, subscription=SUB):
    credential = StaticToken(token)
    return NetworkManagementClient(
        credential,
        subscription,
        base_url=URLS[mode],
        authentication_policy=PlainHttpBearerPolicy(credential, "https://management.azure.com/.default"),
        retry_total=0,
        logging_enable=False,
        polling_interval=0.05,
    )


def net_id(subscription=SUB, group=RG):
    return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Network"


def pip_model(**extra):
    fields = dict(
        location=LOCATION,
        sku=PublicIPAddressSku(name="Standard", tier="Regional"),
        public_ip_allocation_method="Static",
        public_ip_address_version="IPv4",
    )
    fields.update(extra)
    return PublicIPAddress(**fields)


def error_code(e):
    return e.error.code if getattr(e, "error", None) is not None else None


@pytest.fixture(params=["sync", "polling"])
def mode(request):
    return request.param


# --------------------------------------------------------------------------- public IPs


def test_public_ip_create_get_list_delete(mode):
    c = client(mode)
    name = f"sdk-pip-{mode}"
    wanted = pip_model(tags={"team": "net"}, idle_timeout_in_minutes=12)
    created = c.public_ip_addresses.begin_create_or_update(RG, name, wanted).result()
    assert created.provisioning_state == "Succeeded"
    assert created.ip_address
    assert created.id == f"{net_id()}/publicIPAddresses/{name}"
    assert (created.sku.name, created.sku.tier) == ("Standard", "Regional")
    assert created.tags == {"team": "net"}
    assert created.idle_timeout_in_minutes == 12
    assert created.public_ip_allocation_method == "Static"
    assert created.public_ip_address_version == "IPv4"
    assert created.etag and created.type == "Microsoft.Network/publicIPAddresses"

    got = c.public_ip_addresses.get(RG, name)
    assert (got.ip_address, got.etag, got.tags) == (created.ip_address, created.etag, created.tags)
    assert name in [p.name for p in c.public_ip_addresses.list(RG)]

    c.public_ip_addresses.begin_delete(RG, name).result()
    with pytest.raises(ResourceNotFoundError) as e:
        c.public_ip_addresses.get(RG, name)
    assert error_code(e.value) == "ResourceNotFound"
    # Deleting what is not there succeeds (ARM answers 204).
    c.public_ip_addresses.begin_delete(RG, name).result()


def test_a_public_ip_without_a_location_is_refused():
    c = client("sync")
    with pytest.raises(HttpResponseError) as e:
        c.public_ip_addresses.begin_create_or_update(RG, "sdk-noloc", PublicIPAddress(public_ip_address_version="IPv4")).result()
    assert e.value.status_code == 400
    assert error_code(e.value) == "LocationRequired"


def test_a_stale_if_match_is_refused():
    c = client("sync")
    first = c.public_ip_addresses.begin_create_or_update(RG, "sdk-guarded", pip_model()).result()
    second = c.public_ip_addresses.begin_create_or_update(RG, "sdk-guarded", pip_model(), headers={"If-Match": first.etag}).result()
    assert second.etag != first.etag
    with pytest.raises(HttpResponseError) as e:
        c.public_ip_addresses.begin_create_or_update(RG, "sdk-guarded", pip_model(), headers={"If-Match": first.etag}).result()
    assert e.value.status_code == 412
    assert error_code(e.value) == "PreconditionFailed"
    assert c.public_ip_addresses.get(RG, "sdk-guarded").etag == second.etag
    c.public_ip_addresses.begin_delete(RG, "sdk-guarded").result()


def test_a_get_during_a_long_running_operation_shows_it_in_progress():
    c = client("polling")
    name = "sdk-slow"
    # Start the operation without polling, look, then let the SDK's poller resume it.
    started = c.public_ip_addresses.begin_create_or_update(RG, name, pip_model(), polling=Paused(0))
    assert c.public_ip_addresses.get(RG, name).provisioning_state == "Updating"
    token = started.continuation_token()
    done = c.public_ip_addresses.begin_create_or_update(RG, name, pip_model(), continuation_token=token).result()
    assert done.provisioning_state == "Succeeded"
    assert c.public_ip_addresses.get(RG, name).provisioning_state == "Succeeded"

    started = c.public_ip_addresses.begin_delete(RG, name, polling=Paused(0))
    assert c.public_ip_addresses.get(RG, name).provisioning_state == "Deleting"
    c.public_ip_addresses.begin_delete(RG, name, continuation_token=started.continuation_token()).result()
    with pytest.raises(ResourceNotFoundError):
        c.public_ip_addresses.get(RG, name)


# --------------------------------------------------------------------------- load balancers


def load_balancer_model(name, pip_id):
    lb_id = f"{net_id()}/loadBalancers/{name}"
    return LoadBalancer(
        location=LOCATION,
        sku=LoadBalancerSku(name="Service"),
        frontend_ip_configurations=[FrontendIPConfiguration(name="fe-sdk", public_ip_address=PublicIPAddress(id=pip_id))],
        backend_address_pools=[BackendAddressPool(name=name)],
        load_balancing_rules=[
            LoadBalancingRule(
                name="rule-tcp-80",
                protocol="Tcp",
                frontend_port=80,
                backend_port=8080,
                idle_timeout_in_minutes=4,
                enable_floating_ip=False,
                enable_tcp_reset=True,
                frontend_ip_configuration=SubResource(id=f"{lb_id}/frontendIPConfigurations/fe-sdk"),
                backend_address_pool=SubResource(id=f"{lb_id}/backendAddressPools/{name}"),
            )
        ],
    )


def test_load_balancer_create_get_delete(mode):
    c = client(mode)
    name = f"sdk-lb-{mode}"
    pip = c.public_ip_addresses.begin_create_or_update(RG, f"{name}-pip", pip_model()).result()
    lb = c.load_balancers.begin_create_or_update(RG, name, load_balancer_model(name, pip.id)).result()
    lb_id = f"{net_id()}/loadBalancers/{name}"
    for got in (lb, c.load_balancers.get(RG, name)):
        assert got.id == lb_id and got.provisioning_state == "Succeeded"
        fe, pool, rule = got.frontend_ip_configurations[0], got.backend_address_pools[0], got.load_balancing_rules[0]
        for child, segment in ((fe, "frontendIPConfigurations"), (pool, "backendAddressPools"), (rule, "loadBalancingRules")):
            assert child.id == f"{lb_id}/{segment}/{child.name}"
            assert child.etag == got.etag
            assert child.type == f"Microsoft.Network/loadBalancers/{segment}"
            assert child.provisioning_state == "Succeeded"
        assert fe.public_ip_address.id == pip.id
        assert rule.frontend_ip_configuration.id == fe.id and rule.backend_address_pool.id == pool.id
    # The public IP names the frontend that uses it.
    assert c.public_ip_addresses.get(RG, f"{name}-pip").ip_configuration.id == f"{lb_id}/frontendIPConfigurations/fe-sdk"
    assert name in [x.name for x in c.load_balancers.list(RG)]
    c.load_balancers.begin_delete(RG, name).result()
    with pytest.raises(ResourceNotFoundError):
        c.load_balancers.get(RG, name)
    c.public_ip_addresses.begin_delete(RG, f"{name}-pip").result()


# --------------------------------------------------------------------------- NAT gateways


def test_nat_gateway_create_get_delete(mode):
    c = client(mode)
    name = f"sdk-nat-{mode}"
    pip = c.public_ip_addresses.begin_create_or_update(RG, f"{name}-pip", pip_model(sku=PublicIPAddressSku(name="StandardV2"))).result()
    nat = NatGateway(
        location=LOCATION,
        sku=NatGatewaySku(name="StandardV2"),
        public_ip_addresses=[SubResource(id=pip.id)],
        service_gateway=SubResource(id=f"{net_id()}/serviceGateways/{SGW}"),
    )
    created = c.nat_gateways.begin_create_or_update(RG, name, nat).result()
    got = c.nat_gateways.get(RG, name)
    for n in (created, got):
        assert n.provisioning_state == "Succeeded"
        assert [p.id for p in n.public_ip_addresses] == [pip.id]
        assert n.service_gateway.id == f"{net_id()}/serviceGateways/{SGW}"
    assert c.public_ip_addresses.get(RG, f"{name}-pip").nat_gateway.id == got.id
    # Still attached: Azure refuses to delete the public IP.
    with pytest.raises(HttpResponseError) as e:
        c.public_ip_addresses.begin_delete(RG, f"{name}-pip").result()
    assert error_code(e.value) == "PublicIPAddressCannotBeDeleted"
    c.nat_gateways.begin_delete(RG, name).result()
    with pytest.raises(ResourceNotFoundError):
        c.nat_gateways.get(RG, name)
    c.public_ip_addresses.begin_delete(RG, f"{name}-pip").result()


# --------------------------------------------------------------------------- ServiceGateway


def test_service_gateway_calls_through_the_sdk_pollers():
    c = client("polling")
    uid = "6f1c2a9e-0000-4000-8000-0000000050d1"
    pip = c.public_ip_addresses.begin_create_or_update(RG, f"{uid}-pip", pip_model()).result()
    c.load_balancers.begin_create_or_update(RG, uid, load_balancer_model(uid, pip.id)).result()
    pool_id = f"{net_id()}/loadBalancers/{uid}/backendAddressPools/{uid}"
    register = ServiceGatewayUpdateServicesRequest(
        action="PartialUpdate",
        service_requests=[
            ServiceGatewayServiceRequest(
                is_delete=False,
                service=ServiceGatewayService(name=uid, service_type="Inbound", load_balancer_backend_pools=[BackendAddressPool(id=pool_id)]),
            )
        ],
    )
    c.service_gateways.begin_update_services(RG, SGW, register).result()
    services = {s.name: s for s in c.service_gateways.get_services(RG, SGW)}
    assert services[uid].service_type == "Inbound"
    assert [p.id for p in services[uid].load_balancer_backend_pools] == [pool_id]
    assert services["default-natgw"].is_default

    def publish(*locations):
        request = ServiceGatewayUpdateAddressLocationsRequest(action="PartialUpdate", address_locations=list(locations))
        c.service_gateways.begin_update_address_locations(RG, SGW, request).result()

    def locations():
        return {l.address_location: {a.address: sorted(a.services or []) for a in l.addresses or []} for l in c.service_gateways.get_address_locations(RG, SGW)}

    publish(
        ServiceGatewayAddressLocation(
            address_location="10.224.0.4",
            address_update_action="FullUpdate",
            addresses=[ServiceGatewayAddress(address="10.244.1.7", services=[uid]), ServiceGatewayAddress(address="10.244.1.8", services=[uid])],
        ),
        ServiceGatewayAddressLocation(address_location="10.224.0.5", address_update_action="FullUpdate", addresses=[ServiceGatewayAddress(address="10.244.2.3", services=[uid])]),
    )
    assert locations() == {"10.224.0.4": {"10.244.1.7": [uid], "10.244.1.8": [uid]}, "10.224.0.5": {"10.244.2.3": [uid]}}
    # The REST spec's partial shapes: an address without services and a location without
    # addresses are deleted.
    publish(
        ServiceGatewayAddressLocation(address_location="10.224.0.4", address_update_action="PartialUpdate", addresses=[ServiceGatewayAddress(address="10.244.1.7")]),
        ServiceGatewayAddressLocation(address_location="10.224.0.5"),
    )
    assert locations() == {"10.224.0.4": {"10.244.1.8": [uid]}}
    # Unregistering while addresses are mapped is refused, as NRP does.
    unregister = ServiceGatewayUpdateServicesRequest(
        action="PartialUpdate", service_requests=[ServiceGatewayServiceRequest(is_delete=True, service=ServiceGatewayService(name=uid, service_type="Inbound"))]
    )
    with pytest.raises(HttpResponseError) as e:
        c.service_gateways.begin_update_services(RG, SGW, unregister).result()
    assert error_code(e.value) == "ServiceWithOverlayMappingsCannotBeDeleted"
    publish(ServiceGatewayAddressLocation(address_location="10.224.0.4"))
    c.service_gateways.begin_update_services(RG, SGW, unregister).result()
    assert uid not in {s.name for s in c.service_gateways.get_services(RG, SGW)}
    c.load_balancers.begin_delete(RG, uid).result()
    c.public_ip_addresses.begin_delete(RG, f"{uid}-pip").result()


def test_service_gateway_posts_answer_json_in_synchronous_mode():
    c = client("sync")
    url = f"{URLS['sync']}{net_id()}/serviceGateways/{SGW}/updateAddressLocations?api-version={API_VERSION}"
    rsp = c._send_request(HttpRequest("POST", url, json={"action": "PartialUpdate", "addressLocations": []}))
    # Production's answer (AZURE-WIRE.md 1.6): 200, with a JSON body a client can parse.
    assert rsp.status_code == 200
    assert rsp.headers["Content-Type"].startswith("application/json")
    assert rsp.json() == {"status": "Succeeded"}
    # The 2025-05-01 SDK accepts only 202/204 here, so its poller refuses that 200, as it would
    # refuse NRP's; the polling emulator is what it runs against (the test above).
    with pytest.raises(HttpResponseError) as e:
        c.service_gateways.begin_update_address_locations(RG, SGW, ServiceGatewayUpdateAddressLocationsRequest(action="PartialUpdate", address_locations=[])).result()
    assert e.value.status_code == 200


# --------------------------------------------------------------------------- scope and credentials


def test_another_subscription_or_resource_group_is_not_found():
    c = client("sync")
    c.public_ip_addresses.begin_create_or_update(RG, "sdk-mine", pip_model()).result()
    with pytest.raises(ResourceNotFoundError) as e:
        list(client("sync", subscription="44444444-0000-0000-0000-000000000000").public_ip_addresses.list(RG))
    assert error_code(e.value) == "SubscriptionNotFound"
    with pytest.raises(ResourceNotFoundError) as e:
        list(c.public_ip_addresses.list("someone-elses-rg"))
    assert error_code(e.value) == "ResourceGroupNotFound"
    with pytest.raises(ResourceNotFoundError) as e:
        c.public_ip_addresses.begin_delete("someone-elses-rg", "sdk-mine").result()
    assert error_code(e.value) == "ResourceGroupNotFound"
    assert c.public_ip_addresses.get(RG, "sdk-mine").ip_address
    c.public_ip_addresses.begin_delete(RG, "sdk-mine").result()


def test_two_resource_groups_are_kept_apart():
    other_sub, other_rg = ENV["EMULATOR_OTHER_SUBSCRIPTION"], ENV["EMULATOR_OTHER_RESOURCE_GROUP"]
    a, b = client("polling"), client("polling", subscription=other_sub)
    mine = a.public_ip_addresses.begin_create_or_update(RG, "sdk-twin", pip_model()).result()
    assert "sdk-twin" not in [p.name for p in b.public_ip_addresses.list(other_rg)]
    theirs = b.public_ip_addresses.begin_create_or_update(other_rg, "sdk-twin", pip_model()).result()
    assert theirs.id == f"{net_id(other_sub, other_rg)}/publicIPAddresses/sdk-twin"
    assert theirs.ip_address != mine.ip_address
    b.public_ip_addresses.begin_delete(other_rg, "sdk-twin").result()
    assert a.public_ip_addresses.get(RG, "sdk-twin").ip_address == mine.ip_address
    a.public_ip_addresses.begin_delete(RG, "sdk-twin").result()


def test_a_wrong_token_is_refused(mode):
    with pytest.raises(ClientAuthenticationError) as e:
        list(client(mode, token="not-the-token").public_ip_addresses.list(RG))
    assert e.value.status_code == 401
    assert error_code(e.value) == "InvalidAuthenticationToken"
