"""Every admin operation, once: what the admin API and the command line both do.

The HTTP routes and the CLI turn their input (a JSON body, command-line flags) into the same fields
and call these services, which validate them, write the store and apply the side effects (a removed
connection takes its users' credentials along, a revoked token stops working in this process at
once, what this process keeps of a changed object is reloaded, and each change is logged). Every
refusal is an ``APIError`` naming its field: the API returns it as an error body, the CLI prints its
message and exits non-zero. So both surfaces apply the same rules, with the same messages.

Each service takes the objects it changes; a server passes its live ones, the CLI builds what one
command needs (the other servers pick a change up within seconds). Import each from its module
(``opensupervisor.admin.connections`` …): a command pays only for what it uses.
"""
