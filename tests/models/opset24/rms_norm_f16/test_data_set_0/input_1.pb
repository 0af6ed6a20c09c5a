
BscaleJ²ºéµ1>@=×¼F´x¿J: