"""How the tool reaches nodes: SSH (asyncssh), sockets inside lab namespaces, node commands."""
