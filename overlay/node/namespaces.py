"""The provider namespaces the overlay defines (overlay.kademlia.store.provider_key): the node,
and the simulator running the same cores, take provider records from others for these only, so
a stranger cannot use the DHT to keep its own data."""

from overlay.channels.relay import MEMBERS_NAMESPACE
from overlay.gateway.hosts import ACCOUNT_NAMESPACE

PROVIDER_NAMESPACES = frozenset({MEMBERS_NAMESPACE, ACCOUNT_NAMESPACE})
