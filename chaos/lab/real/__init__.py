"""The neutron backend: Debian 12's Neutron (OpenStack Zed, 21.0.0) runs the lab's routers.

``chaos lab up --backend neutron`` keeps the lab's shape (the fabric, network nodes as hosts
with sshd and a BMC, the vantage point, VM namespaces with sshd and the echo service) and
replaces the emulated L3 agent and API with Neutron's own processes:

- a controller host ``<lab>-controller`` (its own network, mount, PID and UTS namespaces, like
  a node) runs MariaDB, RabbitMQ and neutron-server, and a LinuxBridge agent that plugs the VMs'
  ports (``controller.py``);
- each network node runs ``neutron-linuxbridge-agent`` and ``neutron-l3-agent`` instead of the
  emulated agent (``agents.py``); keepalived, ``neutron-keepalived-state-change``, the state
  files and the process monitor are Neutron's;
- the routers, networks, ports and floating IPs are created through Neutron's API, the
  external network by the admin, the rest by a tenant (``build.py``), and what Neutron chose
  (router and port ids, HA ports, VRIDs, addresses) becomes the lab's plan and inventory;
- Keystone is the lab's own (``chaos.lab.keystone``): neutron-server's keystonemiddleware
  validates every token against it, so the tool authenticates with a password and gets a
  catalog, as on a cloud (see ``docs/neutron-backend.md`` for why not Debian's keystone);
- the runner reaches neutron-server through a loopback forwarder of the lab's services process
  (``forward.py``), the shape the emulated API has; nothing is added to the root namespace.

Every file a process reads is rendered by ``config.py`` into the lab folder; the packages' own
/etc/neutron, /var/lib/neutron, /var/lib/mysql and /var/lib/rabbitmq are not used.
"""
