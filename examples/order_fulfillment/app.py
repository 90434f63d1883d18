"""The seed's order fulfillment, ready for the CLI:

    conveyor worker examples.order_fulfillment.app:app
    conveyor status examples.order_fulfillment.app:app order-1

The services, payloads and fake resources live in ``conveyor.examples.order_fulfillment`` so that
``conveyor demo`` ships with the package; this module only picks the backend.
"""

import os

from conveyor.examples.order_fulfillment import make_app

app = make_app(os.environ.get("CONVEYOR_URL", "sqlite:///conveyor-orders.db"))
